//! Typed identifiers used throughout the engine. None of them is ever a string on the hot path.

use std::fmt;

/// One independent ordered stream of records in the shared log: a durable queue or a raft group.
/// Stream 0 is reserved for the key-value namespace of durable definitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The stream that carries key-value (definition) records; never a user stream.
    pub const DEFINITIONS: StreamId = StreamId(0);
}

/// Log sequence number: the position of a record in the node's whole log, dense and increasing
/// from 1. Durability is reported as "every record with `lsn <= durable_lsn` is on disk".
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Lsn(pub u64);

/// A segment file of the log; ids increase with time and are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl SegmentId {
    /// The file name of this segment: fixed width so that a directory listing sorts by id.
    pub fn file_name(self) -> String {
        format!("{:020}.wal", self.0)
    }

    /// Parses a name produced by [`SegmentId::file_name`]; anything else is not a segment.
    pub fn parse_file_name(name: &str) -> Option<SegmentId> {
        let digits = name.strip_suffix(".wal")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(SegmentId)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {}", self.0)
    }
}

/// Where a record's bytes are: a segment and the byte offset of the record's frame in it.
/// `frame_bytes` is the whole frame including header, padding and checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub segment: SegmentId,
    pub offset: u64,
    pub frame_bytes: u32,
}

impl Location {
    /// Fixed 20-byte encoding used as an index value.
    pub const ENCODED_BYTES: usize = 20;

    pub fn encode(&self) -> [u8; Self::ENCODED_BYTES] {
        let mut out = [0u8; Self::ENCODED_BYTES];
        out[0..8].copy_from_slice(&self.segment.0.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..20].copy_from_slice(&self.frame_bytes.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Location> {
        if bytes.len() < Self::ENCODED_BYTES {
            return None;
        }
        Some(Location {
            segment: SegmentId(u64::from_be_bytes(bytes[0..8].try_into().ok()?)),
            offset: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            frame_bytes: u32::from_be_bytes(bytes[16..20].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_file_names_round_trip_and_sort() {
        let a = SegmentId(9).file_name();
        let b = SegmentId(10).file_name();
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(SegmentId::parse_file_name(&b), Some(SegmentId(10)));
        assert_eq!(SegmentId::parse_file_name("10.wal"), None);
        assert_eq!(SegmentId::parse_file_name("0000000000000000001a.wal"), None);
    }

    #[test]
    fn location_round_trips() {
        let loc = Location {
            segment: SegmentId(7),
            offset: 1 << 40,
            frame_bytes: 4096,
        };
        assert_eq!(Location::decode(&loc.encode()), Some(loc));
        assert_eq!(Location::decode(&[0u8; 3]), None);
    }
}
