//! The engine's one error type. Three kinds of failure are kept apart (STYLE.md): operating
//! errors (`NoSpace`, `Io`), corruption (`Corrupt`, `IndexAheadOfLog`), and a poisoned log after
//! a failed write or sync, which is fatal for this log instance until it is reopened.

use std::io;
use std::path::PathBuf;

use crate::ids::{Lsn, SegmentId};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the log directory is in use by another process (lock {path} is held)")]
    InUse { path: PathBuf },

    #[error("I/O error while {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("no space left on device while {action} {path}; nothing was written, retry once space is freed")]
    NoSpace {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the log is poisoned by an earlier failed {action} (records after lsn {durable_lsn:?} may not be durable); reopen it to recover")]
    Poisoned {
        action: &'static str,
        durable_lsn: Lsn,
    },

    #[error("corrupt record in {segment} at offset {offset}: {reason}, and records written after it had been synced follow it")]
    Corrupt {
        segment: SegmentId,
        offset: u64,
        reason: String,
    },

    #[error("checksum mismatch reading {segment} at offset {offset}: {reason}")]
    ChecksumOnRead {
        segment: SegmentId,
        offset: u64,
        reason: String,
    },

    #[error("the index checkpoint covers up to {checkpoint:?} but the log ends at {log_end:?}: synced records are missing from the log")]
    IndexAheadOfLog { checkpoint: Lsn, log_end: Lsn },

    #[error(
        "{segment} does not exist (it may have been compacted away); look the record up again"
    )]
    SegmentGone { segment: SegmentId },

    #[error("record of {payload_bytes} bytes exceeds the maximum of {record_bytes_max} bytes")]
    RecordTooLarge {
        payload_bytes: usize,
        record_bytes_max: usize,
    },

    #[error("index error while {action}")]
    Index {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("could not decode {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: bincode::error::DecodeError,
    },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("the log is closed")]
    Closed,
}

impl StorageError {
    /// Classifies an I/O failure: ENOSPC is an operating condition the caller can wait out;
    /// everything else is reported as it came.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            StorageError::NoSpace {
                action,
                path,
                source,
            }
        } else {
            StorageError::Io {
                action,
                path,
                source,
            }
        }
    }

    /// True for errors that leave the log usable (the failed operation changed nothing).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::NoSpace { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
