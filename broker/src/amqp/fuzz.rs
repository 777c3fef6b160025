//! The fuzz target's body (see `broker/fuzz/README.md`), here so the seed corpus runs as an
//! ordinary test in CI.

use super::field::FieldTable;
use super::frame::{self, Frame};
use super::method::Method;
use super::properties::{BasicProperties, ContentHeader};
use bytes::{Bytes, BytesMut};

/// Runs every decoder over `data`; panics only if a decoded value does not survive re-encoding.
pub fn decode_everything(data: &[u8]) {
    for frame_max in [4096usize, 131_072] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = frame::parse(&mut buf, frame_max) {
            check_round_trip(&frame);
        }
    }
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(method) = Method::decode(bytes.clone()) {
        let mut again = BytesMut::new();
        method.encode(&mut again);
        assert_eq!(Method::decode(again.freeze()).ok(), Some(method));
    }
    let _ = ContentHeader::decode(bytes.clone());
    let _ = BasicProperties::decode(bytes.clone());
    let _ = FieldTable::decode(bytes);
}

fn check_round_trip(frame: &Frame) {
    let mut buf = BytesMut::new();
    match frame {
        Frame::Method(channel, method) => frame::put_method(&mut buf, *channel, method),
        Frame::Header(channel, header) => frame::put_header(&mut buf, *channel, header),
        Frame::Body(channel, body) => frame::put_body(&mut buf, *channel, body, usize::MAX),
        Frame::Heartbeat(_) => return,
    }
    let again = frame::parse(&mut buf, usize::MAX).ok().flatten();
    assert!(
        frame_eq(again.as_ref(), frame),
        "{frame:?} re-encoded to {again:?}"
    );
}

/// Equality that treats NaN floats in field tables as equal to themselves (their bits are
/// preserved; `PartialEq` on f32/f64 is not reflexive for NaN).
fn frame_eq(a: Option<&Frame>, b: &Frame) -> bool {
    match a {
        Some(a) => a == b || format!("{a:?}") == format!("{b:?}"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder")
    }

    #[test]
    fn seed_corpus_decodes_without_panicking() {
        let mut files = 0;
        for entry in std::fs::read_dir(corpus_dir()).expect("the seed corpus exists") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read");
            decode_everything(&data);
            files += 1;
        }
        assert!(files > 50, "the corpus has {files} files");
    }

    /// A stable-toolchain stand-in for the fuzzer: seeded random mutations of every corpus file
    /// (flipped, inserted and removed octets, truncations).
    #[test]
    fn mutated_corpus_never_panics() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for entry in std::fs::read_dir(corpus_dir()).expect("the seed corpus exists") {
            let original = std::fs::read(entry.expect("entry").path()).expect("read");
            for _ in 0..200 {
                let mut data = original.clone();
                for _ in 0..rng.gen_range(1..4) {
                    if data.is_empty() {
                        break;
                    }
                    let at = rng.gen_range(0..data.len());
                    match rng.gen_range(0..4) {
                        0 => data[at] ^= 1 << rng.gen_range(0..8),
                        1 => data[at] = rng.gen(),
                        2 => data.insert(at, rng.gen()),
                        _ => data.truncate(at),
                    }
                }
                decode_everything(&data);
            }
        }
    }

    /// Writes the seed corpus: one valid frame per method (arbitrary arguments), and content.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        use proptest::strategy::{Strategy, ValueTree};
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for (i, strategy) in super::super::method::strategies().into_iter().enumerate() {
            for j in 0..2 {
                let method = strategy.new_tree(&mut runner).unwrap().current();
                let mut buf = BytesMut::new();
                frame::put_method(&mut buf, 1, &method);
                std::fs::write(dir.join(format!("method-{i:02}-{j}")), &buf).unwrap();
            }
        }
        let props = <BasicProperties as crate::amqp::arbitrary::Arb>::arb();
        for j in 0..4 {
            let properties = props.new_tree(&mut runner).unwrap().current();
            let mut buf = BytesMut::new();
            frame::put_content(
                &mut buf,
                1,
                &crate::amqp::method::BasicPublish::default().into(),
                &properties.encode(),
                &vec![j as u8; 300 * j],
                4096,
            );
            frame::put_heartbeat(&mut buf);
            std::fs::write(dir.join(format!("content-{j}")), &buf).unwrap();
        }
    }
}
