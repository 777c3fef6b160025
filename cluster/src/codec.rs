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
