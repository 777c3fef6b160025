//! The one place this crate encodes with bincode (`../shared/DESIGN.md` §8).

use serde::{de::DeserializeOwned, Serialize};

/// Encodes into a buffer of the encoding's exact size, measured first: growing it as it fills
/// would copy a batch of raft entries (a replicated message) once more on average.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let config = bincode::config::standard();
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config)
        .expect("raft values always encode");
    let mut out = Vec::with_capacity(size.bytes_written);
    bincode::serde::encode_into_std_write(value, &mut out, config)
        .expect("raft values always encode");
    debug_assert_eq!(out.len(), size.bytes_written);
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, Entry, LogId};
    use openraft::{CommittedLeaderId, EntryPayload};

    #[test]
    fn entries_encode_as_bincode_does_into_a_buffer_of_their_exact_size_and_decode_back() {
        let entries: Vec<Entry> = (1..=40u64)
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
                payload: EntryPayload::Normal(Command(
                    vec![index as u8; 1000 * index as usize].into(),
                )),
            })
            .collect();
        let encoded = encode(&entries);
        let reference =
            bincode::serde::encode_to_vec(&entries, bincode::config::standard()).expect("encodes");
        assert_eq!(encoded, reference);
        // Sized once: the buffer never grew past what it holds.
        assert_eq!(encoded.capacity(), encoded.len());
        let back: Vec<Entry> = decode(&encoded).expect("decodes");
        assert_eq!(back.len(), entries.len());
        for (a, b) in back.iter().zip(&entries) {
            assert_eq!(a.log_id, b.log_id);
            match (&a.payload, &b.payload) {
                (EntryPayload::Normal(x), EntryPayload::Normal(y)) => assert_eq!(x.0, y.0),
                _ => panic!("payload kind changed"),
            }
        }
    }
}
