//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use warren_storage::fs::{SimFs, SimFsOptions};
use warren_storage::{MemoryIndex, StreamId, Wal, WalConfig};

/// Small segments so that rolls, compaction and multi-segment recovery happen in small tests.
pub fn small_config(dir: impl Into<PathBuf>) -> WalConfig {
    let mut config = WalConfig::new(dir);
    config.segment_bytes_max = 8 * 1024;
    config.record_bytes_max = 2 * 1024;
    config.pending_bytes_max = 64 * 1024;
    config.checkpoint_ops_max = 64;
    config.background_maintenance = false;
    // The preparer thread would make the simulated disk's contents depend on thread timing;
    // seeded tests must replay exactly. `tests/wal.rs` covers preparation on its own.
    config.prepare_segments = false;
    // Direct writes for records of every size, so that the fault and model tests cover them.
    config.direct_record_bytes_min = 0;
    config
}

/// The seed of a simulated-fault test: `SEED=n` replays one; otherwise a fixed list.
pub fn seeds(default_count: u64) -> Vec<u64> {
    match std::env::var("SEED") {
        Ok(seed) => vec![seed.parse().expect("SEED must be a u64")],
        Err(_) => (1..=default_count).collect(),
    }
}

/// A log on a simulated disk with an in-memory index; `crash` and `reopen` keep the "disk".
pub struct SimLog {
    pub fs: SimFs,
    pub index: Arc<MemoryIndex>,
    pub config: WalConfig,
    pub wal: Option<Wal>,
}

impl SimLog {
    pub fn open(seed: u64, config: WalConfig) -> SimLog {
        let fs = SimFs::new(SimFsOptions::seeded(seed));
        let index = Arc::new(MemoryIndex::new());
        let wal = Wal::open(config.clone(), Arc::new(fs.clone()), index.clone()).expect("open");
        SimLog {
            fs,
            index,
            config,
            wal: Some(wal),
        }
    }

    pub fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("log is open")
    }

    /// Power loss: unsynced bytes may be lost or torn; the index keeps its last commit.
    pub fn crash(&mut self) {
        self.fs.crash();
        self.index = Arc::new(self.index.crash());
        // The old instance is detached from the new "disk"; stopping it changes nothing there.
        drop(self.wal.take());
    }

    /// Power loss that also loses the index files.
    pub fn crash_losing_index(&mut self) {
        self.crash();
        self.index = Arc::new(MemoryIndex::lost());
    }

    pub fn try_reopen(&mut self) -> warren_storage::Result<()> {
        let wal = Wal::open(
            self.config.clone(),
            Arc::new(self.fs.clone()),
            self.index.clone(),
        )?;
        self.wal = Some(wal);
        Ok(())
    }

    pub fn reopen(&mut self) {
        self.try_reopen().expect("reopen");
    }

    pub fn close(&mut self) {
        self.wal.take().expect("open").close().expect("clean close");
    }
}

/// Everything live in the log: stream records and definitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub streams: BTreeMap<(u64, u64), Vec<u8>>,
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub fn contents(wal: &Wal, streams: &[u64]) -> Contents {
    let mut out = Contents::default();
    for &stream in streams {
        for (seq, payload) in wal
            .read_stream(StreamId(stream), 0, usize::MAX)
            .expect("read_stream")
        {
            out.streams.insert((stream, seq), payload);
        }
    }
    out.kv = wal.kv_prefix(b"").expect("kv_prefix").into_iter().collect();
    out
}

pub fn payload(stream: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut out = format!("{stream}:{seq}:").into_bytes();
    out.resize(len.max(out.len()), (seq % 251) as u8);
    out
}

/// Prints the seed if the test panics while this is alive, so the failure can be replayed.
pub struct SeedReport(pub u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "failing seed: replay with SEED={} cargo test -p warren-storage",
                self.0
            );
        }
    }
}
