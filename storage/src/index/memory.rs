//! An in-memory index for simulated-crash tests. Its state is what the last `commit` left, like
//! a disk; [`MemoryIndex::crash`] returns a fresh handle on that state and detaches the old one,
//! so a log instance that was running at the simulated crash cannot commit anything after it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Checkpoint, Index, IndexOp, KvEntry};
use crate::error::Result;
use crate::ids::{Location, StreamId};

#[derive(Clone, Debug, Default)]
struct Contents {
    messages: BTreeMap<(u64, u64), Location>,
    kv: BTreeMap<Vec<u8>, (Location, Vec<u8>)>,
    checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Default)]
pub struct MemoryIndex {
    contents: Arc<Mutex<Contents>>,
}

impl MemoryIndex {
    pub fn new() -> MemoryIndex {
        MemoryIndex::default()
    }

    fn contents(&self) -> MutexGuard<'_, Contents> {
        self.contents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A handle on the committed state as a restarted process would see it.
    pub fn crash(&self) -> MemoryIndex {
        let copy = self.contents().clone();
        MemoryIndex {
            contents: Arc::new(Mutex::new(copy)),
        }
    }

    /// A handle on an empty index: the index files were lost.
    pub fn lost() -> MemoryIndex {
        MemoryIndex::default()
    }
}

impl Index for MemoryIndex {
    fn load_checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self.contents().checkpoint.clone())
    }

    fn get(&self, stream: StreamId, seq: u64) -> Result<Option<Location>> {
        Ok(self.contents().messages.get(&(stream.0, seq)).copied())
    }

    fn range(
        &self,
        stream: StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Location)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .contents()
            .messages
            .range((stream.0, from)..(stream.0, to))
            .take(limit)
            .map(|(&(_, seq), &location)| (seq, location))
            .collect())
    }

    fn kv_get(&self, key: &[u8]) -> Result<Option<(Location, Vec<u8>)>> {
        Ok(self.contents().kv.get(key).cloned())
    }

    fn kv_prefix(&self, prefix: &[u8]) -> Result<Vec<KvEntry>> {
        Ok(self
            .contents()
            .kv
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (location, value))| (key.clone(), *location, value.clone()))
            .collect())
    }

    fn commit(&self, ops: &[IndexOp], checkpoint: &Checkpoint) -> Result<()> {
        let mut contents = self.contents();
        for op in ops {
            match op {
                IndexOp::Put {
                    stream,
                    seq,
                    location,
                } => {
                    contents.messages.insert((stream.0, *seq), *location);
                }
                IndexOp::Remove { stream, seq } => {
                    contents.messages.remove(&(stream.0, *seq));
                }
                IndexOp::KvPut {
                    key,
                    location,
                    value,
                } => {
                    contents.kv.insert(key.clone(), (*location, value.clone()));
                }
                IndexOp::KvRemove { key } => {
                    contents.kv.remove(key);
                }
            }
        }
        contents.checkpoint = Some(checkpoint.clone());
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        *self.contents() = Contents::default();
        Ok(())
    }
}
