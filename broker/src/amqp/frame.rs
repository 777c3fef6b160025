//! Frames: `type:u8 channel:u16 size:u32 payload frame-end(0xCE)`.

use super::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
};
use super::method::Method;
use super::properties::ContentHeader;
use super::wire::CodecError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

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

/// Room reserved past a frame that does not fit its read buffer.
///
/// The part of the frame already read is copied into the new allocation. Reading ahead by a few
/// frames' worth means that copy happens once every few frames, not at nearly every one: with
/// room for exactly one frame, a stream of 64 KiB bodies copied almost every body once more.
/// Frames (and so messages) hold on to the buffer they were read into, which bounds it from
/// above.
fn read_ahead(frame: usize) -> usize {
    const MIN: usize = 64 * 1024;
    const MAX: usize = 512 * 1024;
    (4 * frame).clamp(MIN, MAX)
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
    let whole = size + FRAME_OVERHEAD;
    if buf.len() < whole {
        if buf.capacity() < whole {
            buf.reserve(whole - buf.len() + read_ahead(whole));
        }
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

/// Bodies at least this large are sent from the message's own bytes (a vectored write) rather
/// than copied into the output buffer.
pub const SHARED_BODY_MIN: usize = 4096;

/// Frames waiting to be written to a socket: a buffer the small frames are encoded into (it
/// derefs to it), with large bodies between them referenced, not copied. `take` returns the
/// pieces in order, for one vectored write.
#[derive(Debug, Default)]
pub struct Output {
    buf: BytesMut,
    pieces: Vec<Bytes>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.pieces.is_empty()
    }

    /// Appends `bytes` without copying them.
    fn put_shared(&mut self, bytes: Bytes) {
        if !self.buf.is_empty() {
            self.pieces.push(self.buf.split().freeze());
        }
        self.pieces.push(bytes);
    }

    /// Everything appended so far, in order.
    pub fn take(&mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.pieces.push(self.buf.split().freeze());
        }
        std::mem::take(&mut self.pieces)
    }

    /// Appends a method with content, as [`put_content`] does, but a large body's frames refer
    /// to `body` itself.
    pub fn put_content(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &Bytes,
        body: &Bytes,
        frame_max: usize,
    ) {
        if body.len() < SHARED_BODY_MIN {
            put_content(&mut self.buf, channel, method, properties, body, frame_max);
            return;
        }
        self.put_content_parts(channel, method, properties, &[], body, frame_max);
    }

    /// Appends a method with content whose body is `head` followed by `tail`: `head` is copied,
    /// and the body frames refer to `tail` if it is at least [`SHARED_BODY_MIN`] long (the load
    /// generator's bodies differ only in their first bytes, so they share a tail).
    pub fn put_content_parts(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &Bytes,
        head: &[u8],
        tail: &Bytes,
        frame_max: usize,
    ) {
        put_method(&mut self.buf, channel, method);
        let len = head.len() + tail.len();
        put_header(
            &mut self.buf,
            channel,
            &ContentHeader {
                body_size: len as u64,
                properties: properties.clone(),
            },
        );
        let chunk_max = (frame_max - FRAME_OVERHEAD).max(1);
        let shared = tail.len() >= SHARED_BODY_MIN;
        let mut at = 0;
        while at < len {
            let end = len.min(at + chunk_max);
            self.buf.put_u8(FRAME_BODY);
            self.buf.put_u16(channel);
            self.buf.put_u32((end - at) as u32);
            if at < head.len() {
                self.buf.put_slice(&head[at..end.min(head.len())]);
            }
            if end > head.len() {
                let part = tail.slice(at.max(head.len()) - head.len()..end - head.len());
                if shared {
                    self.put_shared(part);
                } else {
                    self.buf.put_slice(&part);
                }
            }
            self.buf.put_u8(FRAME_END);
            at = end;
        }
    }
}

impl std::ops::Deref for Output {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl std::ops::DerefMut for Output {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// Writes every piece, in order, with as few `writev` calls as the socket allows.
pub async fn write_pieces<W: AsyncWrite + Unpin>(
    writer: &mut W,
    pieces: &[&Bytes],
) -> std::io::Result<()> {
    /// Slices per call (Linux takes at most 1024).
    const SLICES_MAX: usize = 256;
    let (mut piece, mut offset) = (0, 0);
    while piece < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces[piece..]
            .iter()
            .take(SLICES_MAX)
            .enumerate()
            .map(|(i, p)| std::io::IoSlice::new(if i == 0 { &p[offset..] } else { &p[..] }))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while piece < pieces.len() && written >= pieces[piece].len() - offset {
            written -= pieces[piece].len() - offset;
            piece += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
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
