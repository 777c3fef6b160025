//! Segment files: naming, the header frame that opens each segment, and scanning a segment's
//! frames.
//!
//! Every segment starts with a header frame (kind 6, not a log record: it consumes no LSN) whose
//! `lsn` is the LSN of the first record the segment will hold and whose `stream` is the segment's
//! own id. Frames follow back to back, each 8-byte aligned. A segment is preallocated to its full
//! size when created, so the region after its last frame reads as zeros; the header is synced,
//! and the directory entry with it, before any record is written to the segment.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::ids::{Lsn, SegmentId};
use crate::record::{self, Decoded, RawHeader, RecordHeader, FRAME_ALIGN};

/// Kind byte of the segment header frame. Not a `RecordKind`: it is never a log record.
pub const HEADER_KIND: u8 = 6;

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
    /// Only zeros follow `offset`: the segment's clean end.
    Clean { offset: u64 },
    /// Something that is not the next frame starts at `offset`.
    Bad { offset: u64, reason: &'static str },
}

/// Scans frames from `start`, accepting a frame only if its LSN is the next expected one
/// (a frame with another LSN is stale or foreign data). Calls `visit` for each, in order.
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
        if buf[pos..].iter().all(|&b| b == 0) {
            return Ok(ScanEnd::Clean { offset: pos as u64 });
        }
        return Ok(ScanEnd::Bad {
            offset: pos as u64,
            reason,
        });
    }
}

/// The highest `durable_lsn` claimed by any valid frame (record or segment header) found at any
/// aligned offset of `buf` from `start`. A frame that claims `durable_lsn >= L` proves that
/// record `L` had been synced before it was written.
pub fn max_durable_claim(buf: &[u8], start: usize, record_bytes_max: usize) -> Option<Lsn> {
    let mut best: Option<Lsn> = None;
    let mut pos = start.div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
    while pos + record::HEADER_BYTES <= buf.len() {
        if let record::RawDecoded::Frame { header, .. } =
            record::decode_raw(&buf[pos..], record_bytes_max)
        {
            best = best.max(Some(header.durable_lsn));
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
        record::encode_into(&mut out, &header, &[lsn as u8; 20]);
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
        assert_eq!(max_durable_claim(&buf, 0, MAX), Some(Lsn(8)));
        assert_eq!(max_durable_claim(&[0u8; 512], 0, MAX), None);
    }
}
