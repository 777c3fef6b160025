//! Segment files: naming, the header frame that opens each segment, the seal frame that ends
//! one, and scanning a segment's frames.
//!
//! Every segment starts with a header frame (kind 6, not a log record: it consumes no LSN) whose
//! `lsn` is the LSN of the first record the segment will hold and whose `stream` is the segment's
//! own id. Frames follow back to back, each 8-byte aligned. The header is synced, and the
//! directory entry with it, before any record is written to the segment.
//!
//! What follows the last frame is either zeros (a segment created by fallocate or zero-filled)
//! or the stale frames of a recycled segment file (see `wal::preparer`). Stale frames never pass
//! for records: every one carries an LSN below the segment's first LSN, and a scan accepts only
//! the next expected LSN. To end a segment without relying on what follows, a seal frame (kind
//! 7, no LSN consumed, `lsn` = the next LSN due) is written after its last record when the log
//! rolls to the next segment and when the log is closed; appending later overwrites a closing
//! seal.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::ids::{Lsn, SegmentId};
use crate::record::{self, Decoded, RawHeader, RecordHeader, FRAME_ALIGN};

/// Kind byte of the segment header frame. Not a `RecordKind`: it is never a log record.
pub const HEADER_KIND: u8 = 6;

/// Kind byte of the seal frame that ends a segment. Not a `RecordKind` either.
pub const SEAL_KIND: u8 = 7;

/// Bytes a seal frame occupies; every segment keeps room for one after its last record.
pub const SEAL_BYTES: usize = record::HEADER_BYTES;

/// Format version written into every segment header.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HeaderPayload {
    format_version: u32,
}

/// The decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: SegmentId,
    pub first_lsn: Lsn,
    pub durable_lsn: Lsn,
}

/// Encodes the header frame of a new segment.
pub fn encode_header(header: &SegmentHeader) -> Vec<u8> {
    let payload = codec::encode(&HeaderPayload {
        format_version: FORMAT_VERSION,
    });
    let mut out = Vec::new();
    record::encode_frame(
        &mut out,
        HEADER_KIND,
        &RawHeader {
            lsn: header.first_lsn,
            durable_lsn: header.durable_lsn,
            stream: header.segment.0,
            seq: 0,
        },
        &payload,
    );
    out
}

/// Encodes the seal that ends `segment` when `next_lsn` is the next LSN due.
pub fn encode_seal(segment: SegmentId, next_lsn: Lsn, durable_lsn: Lsn) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_BYTES);
    record::encode_frame(
        &mut out,
        SEAL_KIND,
        &RawHeader {
            lsn: next_lsn,
            durable_lsn,
            stream: segment.0,
            seq: 0,
        },
        &[],
    );
    out
}

/// Decodes the header frame at the start of `buf`; returns it and its length.
pub fn decode_header(
    buf: &[u8],
    record_bytes_max: usize,
) -> Result<(SegmentHeader, usize), &'static str> {
    match record::decode_raw(buf, record_bytes_max) {
        record::RawDecoded::Frame {
            kind: HEADER_KIND,
            header,
            payload,
            frame_bytes,
        } => {
            let info: HeaderPayload = codec::decode(payload, "segment header")
                .map_err(|_| "undecodable header payload")?;
            if info.format_version != FORMAT_VERSION {
                return Err("unknown segment format version");
            }
            Ok((
                SegmentHeader {
                    segment: SegmentId(header.stream),
                    first_lsn: header.lsn,
                    durable_lsn: header.durable_lsn,
                },
                frame_bytes,
            ))
        }
        record::RawDecoded::Frame { .. } => Err("first frame is not a segment header"),
        record::RawDecoded::Truncated => Err("truncated segment header"),
        record::RawDecoded::Invalid(reason) => Err(reason),
    }
}

/// One valid record frame found by a scan.
#[derive(Debug)]
pub struct ScannedFrame<'a> {
    pub offset: u64,
    pub header: RecordHeader,
    pub payload: &'a [u8],
    pub frame_bytes: usize,
}

/// Where and why a sequential scan of a segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The segment's clean end: only zeros follow `offset`, or the seal frame is there.
    Clean { offset: u64 },
    /// Something that is not the next frame starts at `offset`.
    Bad { offset: u64, reason: &'static str },
}

/// Scans frames from `start`, accepting a frame only if its LSN is the next expected one
/// (a frame with another LSN is stale or foreign data), up to a seal frame that names the next
/// expected LSN or zeros. Calls `visit` for each record frame, in order.
/// `expected` is updated as frames are accepted; `None` accepts the first frame's LSN.
pub fn scan_frames<'a, E>(
    buf: &'a [u8],
    start: usize,
    record_bytes_max: usize,
    expected: &mut Option<Lsn>,
    mut visit: impl FnMut(ScannedFrame<'a>) -> Result<(), E>,
) -> Result<ScanEnd, E> {
    let mut pos = start;
    loop {
        if pos >= buf.len() {
            return Ok(ScanEnd::Clean { offset: pos as u64 });
        }
        let reason = match record::decode(&buf[pos..], record_bytes_max) {
            Decoded::Frame {
                header,
                payload,
                frame_bytes,
            } => {
                if expected.is_some_and(|lsn| lsn != header.lsn) {
                    "unexpected lsn"
                } else {
                    *expected = Some(Lsn(header.lsn.0 + 1));
                    visit(ScannedFrame {
                        offset: pos as u64,
                        header,
                        payload,
                        frame_bytes,
                    })?;
                    pos += frame_bytes;
                    continue;
                }
            }
            Decoded::Truncated => "truncated frame",
            Decoded::Invalid(reason) => reason,
        };
        if is_seal(&buf[pos..], record_bytes_max, *expected) {
            return Ok(ScanEnd::Clean { offset: pos as u64 });
        }
        if buf[pos..].iter().all(|&b| b == 0) {
            return Ok(ScanEnd::Clean { offset: pos as u64 });
        }
        return Ok(ScanEnd::Bad {
            offset: pos as u64,
            reason,
        });
    }
}

/// Whether `buf` starts with a seal frame naming `expected` as the next LSN.
fn is_seal(buf: &[u8], record_bytes_max: usize, expected: Option<Lsn>) -> bool {
    matches!(
        record::decode_raw(buf, record_bytes_max),
        record::RawDecoded::Frame { kind: SEAL_KIND, header, .. } if Some(header.lsn) == expected
    )
}

/// The highest `durable_lsn` claimed by any valid frame (record, segment header or seal) with an
/// LSN of at least `lsn_min` found at any aligned offset of `buf` from `start`. A frame that
/// claims `durable_lsn >= L` proves that record `L` had been synced before it was written.
/// `lsn_min` is the segment's first LSN: frames below it are stale (a recycled file's former
/// contents) and prove nothing about this segment.
pub fn max_durable_claim(
    buf: &[u8],
    start: usize,
    record_bytes_max: usize,
    lsn_min: Lsn,
) -> Option<Lsn> {
    let mut best: Option<Lsn> = None;
    let mut pos = start.div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
    while pos + record::HEADER_BYTES <= buf.len() {
        match record::decode_raw(&buf[pos..], record_bytes_max) {
            record::RawDecoded::Frame { header, .. } if header.lsn >= lsn_min => {
                best = best.max(Some(header.durable_lsn));
            }
            _ => {}
        }
        pos += FRAME_ALIGN;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    const MAX: usize = 1 << 20;

    fn record(lsn: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let header = RecordHeader {
            kind: RecordKind::Put,
            lsn: Lsn(lsn),
            durable_lsn: Lsn(lsn - 1),
            stream: 1,
            seq: lsn,
        };
        record::encode_into(&mut out, &header, &[&[lsn as u8; 20]]);
        out
    }

    #[test]
    fn header_round_trips() {
        let header = SegmentHeader {
            segment: SegmentId(3),
            first_lsn: Lsn(100),
            durable_lsn: Lsn(90),
        };
        let bytes = encode_header(&header);
        assert_eq!(decode_header(&bytes, MAX), Ok((header, bytes.len())));
        assert!(
            decode_header(&record(5), MAX).is_err(),
            "a record is not a header"
        );
        assert!(decode_header(&[0u8; 64], MAX).is_err());
    }

    #[test]
    fn scan_stops_cleanly_at_zeros_and_reports_garbage() {
        let mut buf = Vec::new();
        for lsn in 1..=3 {
            buf.extend(record(lsn));
        }
        let end_of_records = buf.len();
        buf.resize(end_of_records + 256, 0);
        let mut expected = Some(Lsn(1));
        let mut seen = Vec::new();
        let end = scan_frames::<()>(&buf, 0, MAX, &mut expected, |f| {
            seen.push(f.header.lsn.0);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(
            end,
            ScanEnd::Clean {
                offset: end_of_records as u64
            }
        );

        buf[end_of_records + 100] = 7;
        let mut expected = Some(Lsn(1));
        let end = scan_frames::<()>(&buf, 0, MAX, &mut expected, |_| Ok(())).unwrap();
        assert!(matches!(end, ScanEnd::Bad { offset, .. } if offset == end_of_records as u64));
    }

    #[test]
    fn a_frame_with_the_wrong_lsn_ends_the_scan() {
        let mut buf = record(1);
        buf.extend(record(7)); // stale data from elsewhere
        let mut expected = Some(Lsn(1));
        let end = scan_frames::<()>(&buf, 0, MAX, &mut expected, |_| Ok(())).unwrap();
        assert!(matches!(
            end,
            ScanEnd::Bad {
                reason: "unexpected lsn",
                ..
            }
        ));
        assert_eq!(expected, Some(Lsn(2)));
    }

    #[test]
    fn durable_claims_are_found_at_any_aligned_offset() {
        let mut buf = vec![0xFFu8; 24]; // garbage, then a valid frame at an aligned offset
        buf.extend(record(9));
        assert_eq!(max_durable_claim(&buf, 0, MAX, Lsn(1)), Some(Lsn(8)));
        assert_eq!(max_durable_claim(&[0u8; 512], 0, MAX, Lsn(1)), None);
        assert_eq!(
            max_durable_claim(&buf, 0, MAX, Lsn(10)),
            None,
            "a frame below the segment's first lsn is stale: it proves nothing"
        );
    }

    #[test]
    fn a_seal_naming_the_next_lsn_ends_the_scan_before_stale_frames() {
        let mut buf = Vec::new();
        for lsn in 20..=21 {
            buf.extend(record(lsn));
        }
        let sealed_at = buf.len();
        buf.extend(encode_seal(SegmentId(4), Lsn(22), Lsn(21)));
        assert_eq!(buf.len() - sealed_at, SEAL_BYTES);
        buf.extend(record(3)); // a recycled file's former contents
        buf.extend(record(4));
        let mut expected = Some(Lsn(20));
        let end = scan_frames::<()>(&buf, 0, MAX, &mut expected, |_| Ok(())).unwrap();
        assert_eq!(
            end,
            ScanEnd::Clean {
                offset: sealed_at as u64
            }
        );
        assert_eq!(expected, Some(Lsn(22)));

        // A seal that names another LSN (a stale one) ends nothing: what is there is not the
        // next frame.
        let mut stale = record(20);
        let stale_at = stale.len();
        stale.extend(encode_seal(SegmentId(1), Lsn(5), Lsn(4)));
        let mut expected = Some(Lsn(20));
        let end = scan_frames::<()>(&stale, 0, MAX, &mut expected, |_| Ok(())).unwrap();
        assert!(matches!(end, ScanEnd::Bad { offset, .. } if offset == stale_at as u64));
    }
}
