//! The sled-backed index. sled types never leave this file.
//!
//! One tree, three key spaces so that a checkpoint is one atomic `apply_batch`:
//! `m` + stream (u64 BE) + seq (u64 BE) → [`Location`]; `k` + key → location + value;
//! `c` → the bincode-encoded [`Checkpoint`]. Only this index's single flusher calls `flush`
//! (concurrent `flush_async` deadlocks in sled 0.34.7), and nothing here is needed for
//! durability: the log can always rebuild it.

use std::path::{Path, PathBuf};

use ::sled as sled_db;

use super::{Checkpoint, Index, IndexOp, KvEntry};
use crate::codec;
use crate::error::{Result, StorageError};
use crate::ids::{Location, StreamId};

const CHECKPOINT_KEY: &[u8] = b"c";

#[derive(Debug)]
pub struct SledIndex {
    path: PathBuf,
    db: sled_db::Db,
}

fn index_error(action: &'static str, source: sled_db::Error) -> StorageError {
    StorageError::Index {
        action,
        source: Box::new(source),
    }
}

fn message_key(stream: StreamId, seq: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = b'm';
    key[1..9].copy_from_slice(&stream.0.to_be_bytes());
    key[9..17].copy_from_slice(&seq.to_be_bytes());
    key
}

fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(b'k');
    out.extend_from_slice(key);
    out
}

fn decode_location(bytes: &[u8]) -> Result<Location> {
    Location::decode(bytes).ok_or_else(|| StorageError::Index {
        action: "decoding a location",
        source: format!("{} bytes is not a location", bytes.len()).into(),
    })
}

impl SledIndex {
    /// Opens (or creates) the index at `path`, with at most `cache_bytes` of page cache.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledIndex> {
        let db = sled_db::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .mode(sled_db::Mode::HighThroughput)
            .open()
            .map_err(|e| index_error("opening the sled index", e))?;
        Ok(SledIndex {
            path: path.to_path_buf(),
            db,
        })
    }

    /// Opens the index, and if it cannot be opened (corrupt, or from an incompatible version),
    /// removes it and starts empty: the log will rebuild it.
    pub fn open_or_reset(path: &Path, cache_bytes: u64) -> Result<SledIndex> {
        match SledIndex::open(path, cache_bytes) {
            Ok(index) => Ok(index),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "index unreadable; rebuilding it from the log");
                std::fs::remove_dir_all(path)
                    .map_err(|e| StorageError::io("removing the unreadable index", path, e))?;
                SledIndex::open(path, cache_bytes)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Index for SledIndex {
    fn load_checkpoint(&self) -> Result<Option<Checkpoint>> {
        match self
            .db
            .get(CHECKPOINT_KEY)
            .map_err(|e| index_error("reading the checkpoint", e))?
        {
            Some(bytes) => Ok(Some(codec::decode(&bytes, "index checkpoint")?)),
            None => Ok(None),
        }
    }

    fn get(&self, stream: StreamId, seq: u64) -> Result<Option<Location>> {
        match self
            .db
            .get(message_key(stream, seq))
            .map_err(|e| index_error("reading", e))?
        {
            Some(bytes) => Ok(Some(decode_location(&bytes)?)),
            None => Ok(None),
        }
    }

    fn range(
        &self,
        stream: StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Location)>> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for item in self
            .db
            .range(message_key(stream, from)..message_key(stream, to))
            .take(limit)
        {
            let (key, value) = item.map_err(|e| index_error("scanning a stream", e))?;
            let seq = u64::from_be_bytes(key[9..17].try_into().expect("17-byte key"));
            out.push((seq, decode_location(&value)?));
        }
        Ok(out)
    }

    fn kv_get(&self, key: &[u8]) -> Result<Option<(Location, Vec<u8>)>> {
        match self
            .db
            .get(kv_key(key))
            .map_err(|e| index_error("reading a key", e))?
        {
            Some(bytes) => {
                let location = decode_location(&bytes)?;
                Ok(Some((location, bytes[Location::ENCODED_BYTES..].to_vec())))
            }
            None => Ok(None),
        }
    }

    fn kv_prefix(&self, prefix: &[u8]) -> Result<Vec<KvEntry>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(kv_key(prefix)) {
            let (key, bytes) = item.map_err(|e| index_error("scanning keys", e))?;
            let location = decode_location(&bytes)?;
            out.push((
                key[1..].to_vec(),
                location,
                bytes[Location::ENCODED_BYTES..].to_vec(),
            ));
        }
        Ok(out)
    }

    fn commit(&self, ops: &[IndexOp], checkpoint: &Checkpoint) -> Result<()> {
        let mut batch = sled_db::Batch::default();
        for op in ops {
            match op {
                IndexOp::Put {
                    stream,
                    seq,
                    location,
                } => {
                    batch.insert(&message_key(*stream, *seq)[..], &location.encode()[..]);
                }
                IndexOp::Remove { stream, seq } => batch.remove(&message_key(*stream, *seq)[..]),
                IndexOp::KvPut {
                    key,
                    location,
                    value,
                } => {
                    let mut bytes = location.encode().to_vec();
                    bytes.extend_from_slice(value);
                    batch.insert(kv_key(key), bytes);
                }
                IndexOp::KvRemove { key } => batch.remove(kv_key(key)),
            }
        }
        batch.insert(CHECKPOINT_KEY, codec::encode(checkpoint));
        self.db
            .apply_batch(batch)
            .map_err(|e| index_error("applying a checkpoint", e))?;
        self.db
            .flush()
            .map_err(|e| index_error("flushing a checkpoint", e))?;
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        self.db.clear().map_err(|e| index_error("clearing", e))?;
        self.db
            .flush()
            .map_err(|e| index_error("flushing a clear", e))?;
        Ok(())
    }
}
