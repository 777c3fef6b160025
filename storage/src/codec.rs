//! The one place that turns engine metadata into bytes and back (bincode, standard config).
//! Keeping it here means a change of encoding or a careless bincode bump touches one file.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Result, StorageError};

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding plain data into a Vec cannot fail")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|source| StorageError::Decode { what, source })
}
