//! Shared by the cluster tests: a key-value state to replicate, and a write-ahead log in a
//! temporary directory.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use warren_cluster::state_machine::ReplicatedState;
use warren_storage::{Wal, WalConfig};

/// A key-value state: commands are `key=value`, the reply is the previous value. Cloning
/// shares the map, so a test can read what raft applied.
#[derive(Debug, Default, Clone)]
pub struct Kv(pub Arc<Mutex<BTreeMap<String, String>>>);

impl Kv {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.lock().unwrap().get(key).cloned()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl ReplicatedState for Kv {
    async fn apply(&mut self, _index: u64, command: &bytes::Bytes) -> Vec<u8> {
        let text = String::from_utf8_lossy(command).into_owned();
        let (k, v) = text.split_once('=').unwrap_or((&text, ""));
        self.0
            .lock()
            .unwrap()
            .insert(k.into(), v.into())
            .unwrap_or_default()
            .into_bytes()
    }

    fn snapshot(&self) -> Vec<u8> {
        let map = self.0.lock().unwrap();
        map.iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>()
            .into_bytes()
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(snapshot).map_err(|e| e.to_string())?;
        *self.0.lock().unwrap() = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(())
    }
}

/// A log in `dir/wal` with small segments.
pub fn open_wal(dir: &std::path::Path) -> Arc<Wal> {
    let mut config = WalConfig::new(dir.join("wal"));
    config.segment_bytes_max = 8 * 1024 * 1024;
    config.record_bytes_max = 1024 * 1024;
    config.prepare_segments = false;
    Arc::new(Wal::open_dir(config).expect("open wal"))
}
