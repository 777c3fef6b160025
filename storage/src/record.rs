//! Record framing: how one record is laid out in a segment, and how a frame is checked.
//!
//! ```text
//! offset size field
//!  0     4    payload_len   u32 LE
//!  4     4    len_check     u32 LE = !crc32(payload_len bytes): a torn or flipped length is
//!                           caught before it is used to size a read
//!  8     4    crc           u32 LE = crc32 of bytes [0, 4) and [12, 48 + payload_len)
//! 12     1    kind          1 put, 2 delete, 3 delete-range, 4 kv-put, 5 kv-delete
//! 13     3    reserved      zero
//! 16     8    lsn           u64 LE, dense and increasing across the whole log
//! 24     8    durable_lsn   u64 LE, the log's durable watermark when this record was framed
//! 32     8    stream        u64 LE
//! 40     8    seq           u64 LE, the record's key within its stream
//! 48     n    payload
//! 48+n   p    zero padding to a multiple of 8 bytes
//! ```
//!
//! An all-zero region never validates: a zero length has a non-zero `len_check`, and kind 0 is
//! not a kind. `durable_lsn` lets recovery tell a torn unsynced tail (nothing after the bad
//! record had seen it synced) from corruption of synced data (a later record says it was
//! synced); see `wal::recovery`.

use crate::ids::Lsn;

/// Bytes of the fixed header that precedes every payload.
pub const HEADER_BYTES: usize = 48;
/// Frames start and end on this alignment, which also bounds the resync scan after a bad frame.
pub const FRAME_ALIGN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A live record of a stream, keyed by `seq`; replaces an earlier record with the same key.
    Put = 1,
    /// Deletes (settles, acks) one record of a stream.
    Delete = 2,
    /// Deletes every record of a stream with `seq` in `[seq, end)`.
    DeleteRange = 3,
    /// Sets a key of the definitions namespace.
    KvPut = 4,
    /// Removes a key of the definitions namespace.
    KvDelete = 5,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::Put,
            2 => RecordKind::Delete,
            3 => RecordKind::DeleteRange,
            4 => RecordKind::KvPut,
            5 => RecordKind::KvDelete,
            _ => return None,
        })
    }

    /// Tombstones only matter while an older copy of what they delete may still be on disk.
    pub fn is_tombstone(self) -> bool {
        matches!(
            self,
            RecordKind::Delete | RecordKind::DeleteRange | RecordKind::KvDelete
        )
    }
}

/// The decoded fixed header of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub lsn: Lsn,
    pub durable_lsn: Lsn,
    pub stream: u64,
    pub seq: u64,
}

/// The header fields of any frame, whatever its kind byte (segment headers use a kind that is
/// not a [`RecordKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHeader {
    pub lsn: Lsn,
    pub durable_lsn: Lsn,
    pub stream: u64,
    pub seq: u64,
}

impl RecordHeader {
    pub fn raw(&self) -> RawHeader {
        RawHeader {
            lsn: self.lsn,
            durable_lsn: self.durable_lsn,
            stream: self.stream,
            seq: self.seq,
        }
    }
}

/// Total bytes a frame with `payload_len` bytes of payload occupies on disk.
pub fn frame_bytes(payload_len: usize) -> usize {
    (HEADER_BYTES + payload_len).div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

fn len_check(payload_len: u32) -> u32 {
    !crc32fast::hash(&payload_len.to_le_bytes())
}

/// Appends one record frame to `out`. The caller guarantees `payload.len()` fits the configured
/// maximum.
pub fn encode_into(out: &mut Vec<u8>, header: &RecordHeader, payload: &[&[u8]]) {
    encode_frame_parts(out, header.kind as u8, &header.raw(), payload);
}

/// Appends one frame with an arbitrary kind byte to `out`.
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, header: &RawHeader, payload: &[u8]) {
    encode_frame_parts(out, kind, header, &[payload]);
}

/// Appends one frame whose payload is `parts`, one after the other (so a caller holding a
/// record in pieces need not join them first).
pub fn encode_frame_parts(out: &mut Vec<u8>, kind: u8, header: &RawHeader, parts: &[&[u8]]) {
    frame_into(out, kind, header, parts, None);
}

/// The crc32 state of a payload, computed before framing: [`encode_summed`] combines it with
/// the header's instead of summing the payload again. A log appender sums a large payload
/// before it takes the log's lock, so the lock is held for the copy alone.
pub fn payload_crc(parts: &[&[u8]]) -> crc32fast::Hasher {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
}

/// [`encode_into`] for a payload whose crc32 state (`payload_crc` of the same parts) is known.
pub fn encode_summed(
    out: &mut Vec<u8>,
    header: &RecordHeader,
    payload: &[&[u8]],
    payload_crc: &crc32fast::Hasher,
) {
    frame_into(
        out,
        header.kind as u8,
        &header.raw(),
        payload,
        Some(payload_crc),
    );
}

fn frame_into(
    out: &mut Vec<u8>,
    kind: u8,
    header: &RawHeader,
    parts: &[&[u8]],
    payload_crc: Option<&crc32fast::Hasher>,
) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let payload_len = u32::try_from(len).expect("payload length checked by caller");
    let start = out.len();
    let total = frame_bytes(len);
    out.reserve(total);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&len_check(payload_len).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.push(kind);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&header.lsn.0.to_le_bytes());
    out.extend_from_slice(&header.durable_lsn.0.to_le_bytes());
    out.extend_from_slice(&header.stream.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    // A frame is written out, not read again soon: large parts skip the cache (see `copy`).
    for part in parts {
        crate::copy::extend_streaming(out, part);
    }
    out.resize(start + total, 0);
    // `frame_crc`'s order: the length, the rest of the header, then the payload (summed here,
    // or given and combined).
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start..start + 4]);
    hasher.update(&out[start + 12..start + HEADER_BYTES]);
    match payload_crc {
        // From the parts, not from `out`: a large part was copied with streaming stores, so
        // its copy is not in the cache (summing it there read it back from memory).
        None => parts.iter().for_each(|part| hasher.update(part)),
        Some(payload) => hasher.combine(payload),
    }
    out[start + 8..start + 12].copy_from_slice(&hasher.finalize().to_le_bytes());
}

fn frame_crc(frame_without_padding: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame_without_padding[0..4]);
    hasher.update(&frame_without_padding[12..]);
    hasher.finalize()
}

/// The result of looking for a frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid frame: its header, payload and total size including padding.
    Frame {
        header: RecordHeader,
        payload: &'a [u8],
        frame_bytes: usize,
    },
    /// The buffer ends inside what may be a valid frame (a valid length check but fewer bytes
    /// than the length asks for, or less than a header).
    Truncated,
    /// Not a valid frame; the reason is for error messages.
    Invalid(&'static str),
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the payload length of a frame header if its length check holds. Used to size reads.
pub fn checked_payload_len(header: &[u8], record_bytes_max: usize) -> Result<usize, &'static str> {
    if header.len() < 8 {
        return Err("short header");
    }
    let payload_len = u32_at(header, 0);
    if u32_at(header, 4) != len_check(payload_len) {
        return Err("length check mismatch");
    }
    if payload_len as usize > record_bytes_max {
        return Err("length above the record maximum");
    }
    Ok(payload_len as usize)
}

/// A frame of any kind, as [`decode_raw`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum RawDecoded<'a> {
    Frame {
        kind: u8,
        header: RawHeader,
        payload: &'a [u8],
        frame_bytes: usize,
    },
    Truncated,
    Invalid(&'static str),
}

/// Decodes the frame that starts at `buf[0]`, whatever its kind byte.
pub fn decode_raw(buf: &[u8], record_bytes_max: usize) -> RawDecoded<'_> {
    if buf.len() < HEADER_BYTES {
        // A short tail is only "truncated" if what is there could start a frame.
        return match checked_payload_len(buf, record_bytes_max) {
            Err("short header") | Ok(_) => RawDecoded::Truncated,
            Err(reason) => RawDecoded::Invalid(reason),
        };
    }
    let payload_len = match checked_payload_len(buf, record_bytes_max) {
        Ok(len) => len,
        Err(reason) => return RawDecoded::Invalid(reason),
    };
    let total = frame_bytes(payload_len);
    if buf.len() < HEADER_BYTES + payload_len {
        return RawDecoded::Truncated;
    }
    let frame = &buf[..HEADER_BYTES + payload_len];
    if u32_at(frame, 8) != frame_crc(frame) {
        return RawDecoded::Invalid("checksum mismatch");
    }
    if frame[13..16] != [0, 0, 0] {
        return RawDecoded::Invalid("reserved bytes set");
    }
    let header = RawHeader {
        lsn: Lsn(u64_at(frame, 16)),
        durable_lsn: Lsn(u64_at(frame, 24)),
        stream: u64_at(frame, 32),
        seq: u64_at(frame, 40),
    };
    if header.lsn.0 == 0 || header.durable_lsn >= header.lsn {
        return RawDecoded::Invalid("impossible lsn");
    }
    RawDecoded::Frame {
        kind: frame[12],
        header,
        payload: &frame[HEADER_BYTES..],
        frame_bytes: total,
    }
}

/// Decodes the record frame that starts at `buf[0]`; other kinds are invalid here.
pub fn decode(buf: &[u8], record_bytes_max: usize) -> Decoded<'_> {
    match decode_raw(buf, record_bytes_max) {
        RawDecoded::Frame {
            kind,
            header,
            payload,
            frame_bytes,
        } => match RecordKind::from_byte(kind) {
            Some(kind) => Decoded::Frame {
                header: RecordHeader {
                    kind,
                    lsn: header.lsn,
                    durable_lsn: header.durable_lsn,
                    stream: header.stream,
                    seq: header.seq,
                },
                payload,
                frame_bytes,
            },
            None => Decoded::Invalid("unknown record kind"),
        },
        RawDecoded::Truncated => Decoded::Truncated,
        RawDecoded::Invalid(reason) => Decoded::Invalid(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn sample(payload: &[u8]) -> (RecordHeader, Vec<u8>) {
        let header = RecordHeader {
            kind: RecordKind::Put,
            lsn: Lsn(42),
            durable_lsn: Lsn(40),
            stream: 7,
            seq: 1_000_000,
        };
        let mut out = Vec::new();
        encode_into(&mut out, &header, &[payload]);
        (header, out)
    }

    #[test]
    fn round_trip() {
        let (header, frame) = sample(b"hello world");
        assert_eq!(frame.len(), frame_bytes(11));
        assert_eq!(frame.len() % FRAME_ALIGN, 0);
        match decode(&frame, MAX) {
            Decoded::Frame {
                header: h,
                payload,
                frame_bytes: n,
            } => {
                assert_eq!(h, header);
                assert_eq!(payload, b"hello world");
                assert_eq!(n, frame.len());
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn all_zero_region_never_validates() {
        for len in [0, 8, HEADER_BYTES, 4096] {
            let zeros = vec![0u8; len];
            assert!(
                !matches!(decode(&zeros, MAX), Decoded::Frame { .. }),
                "{len} zero bytes decoded as a frame"
            );
        }
        assert_eq!(
            decode(&[0u8; 64], MAX),
            Decoded::Invalid("length check mismatch")
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let (_, frame) = sample(b"payload that spans a few words");
        let meaningful = HEADER_BYTES + 30; // padding bytes are not covered and not read
        for byte in 0..meaningful {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&bad, MAX), Decoded::Frame { .. }),
                    "flip of bit {bit} in byte {byte} went undetected"
                );
            }
        }
    }

    #[test]
    fn every_torn_length_is_truncated_or_invalid() {
        let (_, frame) = sample(&[0xAB; 100]);
        // Padding is not part of the frame: a cut inside it leaves a complete record.
        for cut in 0..HEADER_BYTES + 100 {
            // A torn write leaves a prefix and then either nothing or stale zeros.
            let prefix = &frame[..cut];
            assert!(
                !matches!(decode(prefix, MAX), Decoded::Frame { .. }),
                "cut at {cut}"
            );
            let mut zero_filled = prefix.to_vec();
            zero_filled.resize(frame.len(), 0);
            assert!(
                !matches!(decode(&zero_filled, MAX), Decoded::Frame { .. }),
                "cut at {cut} followed by zeros validated"
            );
        }
    }

    #[test]
    fn oversize_length_is_refused_before_reading() {
        let (_, mut frame) = sample(b"x");
        let huge = u32::MAX - 3;
        frame[0..4].copy_from_slice(&huge.to_le_bytes());
        frame[4..8].copy_from_slice(&len_check(huge).to_le_bytes());
        assert_eq!(
            decode(&frame, MAX),
            Decoded::Invalid("length above the record maximum")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_records_round_trip(
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            kind in 1u8..=5,
            lsn in 1u64..u64::MAX,
            stream in any::<u64>(),
            seq in any::<u64>(),
        ) {
            let header = RecordHeader {
                kind: RecordKind::from_byte(kind).unwrap(),
                lsn: Lsn(lsn),
                durable_lsn: Lsn(lsn - 1),
                stream,
                seq,
            };
            let mut out = vec![0xEE; 3]; // frames may follow other bytes in a buffer
            // In two parts: framing pieces must equal framing them joined.
            let (a, b) = payload.split_at(payload.len() / 2);
            encode_into(&mut out, &header, &[a, b]);
            match decode(&out[3..], MAX) {
                Decoded::Frame { header: h, payload: p, frame_bytes: n } => {
                    prop_assert_eq!(h, header);
                    prop_assert_eq!(p, &payload[..]);
                    prop_assert_eq!(n, out.len() - 3);
                }
                other => prop_assert!(false, "decode failed: {:?}", other),
            }
        }
    }

    /// CRC-32 (ISO-HDLC, as zlib's `crc32`) one bit at a time: the definition the log's frames
    /// are written with, independent of the crate's table and SIMD kernels.
    fn reference_crc32(parts: &[&[u8]]) -> u32 {
        let mut crc = !0u32;
        for byte in parts.iter().flat_map(|p| p.iter()) {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// The on-disk format pins the checksum, not the crate: crc32fast picks a kernel by CPU and
    /// version (SSE, AVX2 or AVX-512 folding; 1.5.6 added the wide ones), and a log written by
    /// one build is read by the next. Sizes cover every kernel's short and long paths and the
    /// tails they leave; both the summed-while-framing and the summed-before paths are checked.
    #[test]
    fn frame_checksums_are_standard_crc32_for_every_size() {
        assert_eq!(reference_crc32(&[b"123456789"]), 0xCBF4_3926); // the standard check value
        let header = RecordHeader {
            kind: RecordKind::Put,
            lsn: Lsn(5),
            durable_lsn: Lsn(4),
            stream: 2,
            seq: 3,
        };
        for len in [
            0usize, 1, 15, 16, 63, 64, 65, 127, 128, 255, 256, 257, 1024, 4099, 65_536, 65_559,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 131 % 253) as u8).collect();
            let parts: [&[u8]; 2] = [b"meta", &body];
            for summed in [false, true] {
                let mut frame = Vec::new();
                if summed {
                    encode_summed(&mut frame, &header, &parts, &payload_crc(&parts));
                } else {
                    encode_into(&mut frame, &header, &parts);
                }
                let stored = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes"));
                let expected = reference_crc32(&[
                    &frame[0..4],
                    &frame[12..HEADER_BYTES],
                    &frame[HEADER_BYTES..HEADER_BYTES + 4 + len],
                ]);
                assert_eq!(
                    stored, expected,
                    "{len} bytes, summed before framing: {summed}"
                );
            }
        }
    }

    #[test]
    fn a_payload_summed_before_framing_frames_the_same_bytes() {
        let header = RecordHeader {
            kind: RecordKind::Put,
            lsn: Lsn(77),
            durable_lsn: Lsn(70),
            stream: 3,
            seq: 9,
        };
        for len in [0usize, 1, 47, 4096, 70_001] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let parts: [&[u8]; 2] = [b"head", &body];
            let mut plain = Vec::new();
            encode_into(&mut plain, &header, &parts);
            let mut summed = Vec::new();
            encode_summed(&mut summed, &header, &parts, &payload_crc(&parts));
            assert_eq!(summed, plain, "{len} bytes");
            assert!(matches!(decode(&summed, 1 << 20), Decoded::Frame { .. }));
        }
    }
}
