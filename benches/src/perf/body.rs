//! The load generator's message body: who sent it, its sequence number and when, then padding.
//!
//! `producer: u16 | seq: u48 | sent_us: u64 | padding` — 16 octets, so even the 16 B scenario
//! carries everything the checks need.

pub const HEADER_BYTES: usize = 16;

pub fn write(body: &mut [u8], producer: u16, seq: u64, sent_us: u64) {
    body[0..2].copy_from_slice(&producer.to_be_bytes());
    body[2..8].copy_from_slice(&seq.to_be_bytes()[2..8]);
    body[8..16].copy_from_slice(&sent_us.to_be_bytes());
}

/// `(producer, seq, sent_us)`, or `None` for a body not written by [`write`].
pub fn read(body: &[u8]) -> Option<(u16, u64, u64)> {
    if body.len() < HEADER_BYTES {
        return None;
    }
    let producer = u16::from_be_bytes([body[0], body[1]]);
    let mut seq = [0u8; 8];
    seq[2..8].copy_from_slice(&body[2..8]);
    let sent = u64::from_be_bytes(body[8..16].try_into().ok()?);
    Some((producer, u64::from_be_bytes(seq), sent))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let mut body = vec![0u8; 32];
        super::write(&mut body, 7, (1 << 40) + 3, 123_456);
        assert_eq!(super::read(&body), Some((7, (1 << 40) + 3, 123_456)));
        assert_eq!(super::read(&body[..10]), None);
    }
}
