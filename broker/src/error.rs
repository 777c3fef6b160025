//! The broker library's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("storage: {0}")]
    Storage(#[from] warren_storage::StorageError),
    #[error("record of queue stream {stream} seq {seq} does not decode: {source}")]
    BadRecord {
        stream: u64,
        seq: u64,
        #[source]
        source: crate::amqp::CodecError,
    },
    #[error("definition {key:?} does not decode: {reason}")]
    BadDefinition { key: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cluster: {0}")]
    Cluster(String),
}
