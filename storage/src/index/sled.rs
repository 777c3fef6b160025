//! The sled-backed index. sled types never leave this file.
//!
//! Key spaces in one tree:
//! - `m` + stream (u64 BE) + block (u64 BE) → the stream's live records with
//!   `seq / BLOCK_SEQS == block`, each as seq (u64), location (20 bytes), sorted by seq.
//!   Grouping 64 seqs per value cuts the operations sled sees by about that much: on this kind
//!   of machine one sled insert costs 6–9 µs, far too dear to pay per message.
//! - `k` + key → location + value (the definitions namespace);
//! - `c` → the bincode-encoded [`Checkpoint`]; `p` → present while a commit is under way.
//!
//! A commit writes `p`, then every changed block, then `c`, then removes `p`, then flushes.
//! sled recovers a prefix of its operations, so after a crash either `p` is absent and the index
//! is exactly some committed checkpoint, or `p` is present and the index is reported empty (the
//! log rebuilds it). Large atomic `apply_batch` calls are avoided: in sled 0.34.7 their memory
//! use grows far faster than their size. Only this index's single flusher calls `flush`
//! (concurrent `flush_async` deadlocks in sled 0.34.7), and nothing here is needed for
//! durability: the log can always rebuild it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::sled as sled_db;

use super::{Checkpoint, Index, IndexOp, KvEntry};
use crate::codec;
use crate::error::{Result, StorageError};
use crate::ids::{Location, StreamId};

const CHECKPOINT_KEY: &[u8] = b"c";
const COMMIT_IN_PROGRESS_KEY: &[u8] = b"p";
/// Seqs per index block.
pub const BLOCK_SEQS: u64 = 64;
const ENTRY_BYTES: usize = 8 + Location::ENCODED_BYTES;

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

fn block_key(stream: StreamId, block: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = b'm';
    key[1..9].copy_from_slice(&stream.0.to_be_bytes());
    key[9..17].copy_from_slice(&block.to_be_bytes());
    key
}

fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(b'k');
    out.extend_from_slice(key);
    out
}

fn bad_value(what: &str) -> StorageError {
    StorageError::Index {
        action: "decoding an index value",
        source: what.to_string().into(),
    }
}

fn decode_location(bytes: &[u8]) -> Result<Location> {
    Location::decode(bytes).ok_or_else(|| bad_value("short location"))
}

type Block = BTreeMap<u64, Location>;
/// Changes to one block, by seq: a new location or a removal.
type BlockChanges = Vec<(u64, Option<Location>)>;

fn decode_block(bytes: &[u8]) -> Result<Block> {
    if bytes.len() % ENTRY_BYTES != 0 {
        return Err(bad_value("block length is not a whole number of entries"));
    }
    bytes
        .chunks_exact(ENTRY_BYTES)
        .map(|entry| {
            let seq = u64::from_be_bytes(entry[..8].try_into().expect("8 bytes"));
            Ok((seq, decode_location(&entry[8..])?))
        })
        .collect()
}

fn encode_block(block: &Block) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() * ENTRY_BYTES);
    for (seq, location) in block {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&location.encode());
    }
    out
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

    fn block(&self, stream: StreamId, block: u64) -> Result<Block> {
        match self
            .db
            .get(block_key(stream, block))
            .map_err(|e| index_error("reading", e))?
        {
            Some(bytes) => decode_block(&bytes),
            None => Ok(Block::new()),
        }
    }
}

impl Index for SledIndex {
    fn load_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let interrupted = self
            .db
            .contains_key(COMMIT_IN_PROGRESS_KEY)
            .map_err(|e| index_error("reading the commit marker", e))?;
        if interrupted {
            tracing::warn!(path = %self.path.display(), "a checkpoint was interrupted; the index will be rebuilt");
            return Ok(None);
        }
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
        let key = block_key(stream, seq / BLOCK_SEQS);
        let Some(bytes) = self.db.get(key).map_err(|e| index_error("reading", e))? else {
            return Ok(None);
        };
        if bytes.len() % ENTRY_BYTES != 0 {
            return Err(bad_value("block length is not a whole number of entries"));
        }
        // Entries are sorted by seq: binary search the raw bytes, no decoding of the block.
        let entries = bytes.len() / ENTRY_BYTES;
        let seq_at = |i: usize| {
            u64::from_be_bytes(
                bytes[i * ENTRY_BYTES..i * ENTRY_BYTES + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        };
        let (mut low, mut high) = (0, entries);
        while low < high {
            let middle = (low + high) / 2;
            match seq_at(middle).cmp(&seq) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => {
                    let at = middle * ENTRY_BYTES + 8;
                    return decode_location(&bytes[at..at + Location::ENCODED_BYTES]).map(Some);
                }
            }
        }
        Ok(None)
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
        let end = block_key(stream, (to - 1) / BLOCK_SEQS);
        for item in self.db.range(block_key(stream, from / BLOCK_SEQS)..=end) {
            let (_, value) = item.map_err(|e| index_error("scanning a stream", e))?;
            for (seq, location) in decode_block(&value)?.range(from..to) {
                if out.len() == limit {
                    return Ok(out);
                }
                out.push((*seq, *location));
            }
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
        let insert = |key: &[u8], value: Vec<u8>| {
            self.db
                .insert(key, value)
                .map(|_| ())
                .map_err(|e| index_error("writing a checkpoint", e))
        };
        let remove = |key: &[u8]| {
            self.db
                .remove(key)
                .map(|_| ())
                .map_err(|e| index_error("writing a checkpoint", e))
        };
        insert(COMMIT_IN_PROGRESS_KEY, Vec::new())?;
        // Group stream changes by block: one read and one write per changed block.
        let mut blocks: BTreeMap<(u64, u64), BlockChanges> = BTreeMap::new();
        for op in ops {
            match op {
                IndexOp::Put {
                    stream,
                    seq,
                    location,
                } => {
                    blocks
                        .entry((stream.0, seq / BLOCK_SEQS))
                        .or_default()
                        .push((*seq, Some(*location)));
                }
                IndexOp::Remove { stream, seq } => {
                    blocks
                        .entry((stream.0, seq / BLOCK_SEQS))
                        .or_default()
                        .push((*seq, None));
                }
                IndexOp::KvPut {
                    key,
                    location,
                    value,
                } => {
                    let mut bytes = location.encode().to_vec();
                    bytes.extend_from_slice(value);
                    insert(&kv_key(key), bytes)?;
                }
                IndexOp::KvRemove { key } => remove(&kv_key(key))?,
            }
        }
        for ((stream, block_id), changes) in blocks {
            let mut block = self.block(StreamId(stream), block_id)?;
            for (seq, location) in changes {
                match location {
                    Some(location) => block.insert(seq, location),
                    None => block.remove(&seq),
                };
            }
            let key = block_key(StreamId(stream), block_id);
            if block.is_empty() {
                remove(&key)?;
            } else {
                insert(&key, encode_block(&block))?;
            }
        }
        insert(CHECKPOINT_KEY, codec::encode(checkpoint))?;
        remove(COMMIT_IN_PROGRESS_KEY)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Lsn, SegmentId};

    fn location(n: u64) -> Location {
        Location {
            segment: SegmentId(n % 5 + 1),
            offset: n * 64,
            frame_bytes: 64,
        }
    }

    fn checkpoint(next: u64) -> Checkpoint {
        Checkpoint {
            next_lsn: Lsn(next),
            segment: 1,
            offset: 0,
            segments: vec![],
            streams: vec![],
        }
    }

    #[test]
    fn blocks_hold_puts_and_removes_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path(), 1 << 20).unwrap();
        let s = StreamId(3);
        let puts: Vec<IndexOp> = (0..300)
            .map(|seq| IndexOp::Put {
                stream: s,
                seq,
                location: location(seq),
            })
            .collect();
        index.commit(&puts, &checkpoint(301)).unwrap();
        let removes: Vec<IndexOp> = (0..130)
            .map(|seq| IndexOp::Remove { stream: s, seq })
            .collect();
        index.commit(&removes, &checkpoint(431)).unwrap();
        assert_eq!(index.get(s, 129).unwrap(), None);
        assert_eq!(index.get(s, 130).unwrap(), Some(location(130)));
        assert_eq!(
            index.get(StreamId(4), 130).unwrap(),
            None,
            "streams are separate"
        );
        let range = index.range(s, 60, 200, 100).unwrap();
        assert_eq!(range.first().map(|e| e.0), Some(130));
        assert_eq!(range.len(), 70);
        assert_eq!(index.range(s, 0, u64::MAX, 5).unwrap().len(), 5);
        // Emptied blocks are removed, not left behind as empty values.
        assert!(index.db.get(block_key(s, 0)).unwrap().is_none());
        assert_eq!(index.load_checkpoint().unwrap(), Some(checkpoint(431)));
    }

    #[test]
    fn an_interrupted_commit_reads_as_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(dir.path(), 1 << 20).unwrap();
        index.commit(&[], &checkpoint(5)).unwrap();
        index.db.insert(COMMIT_IN_PROGRESS_KEY, Vec::new()).unwrap();
        assert_eq!(index.load_checkpoint().unwrap(), None);
        index.clear().unwrap();
        index.commit(&[], &checkpoint(9)).unwrap();
        assert_eq!(index.load_checkpoint().unwrap(), Some(checkpoint(9)));
    }
}
