//! Storage engine micro-benchmarks: record framing, appends with and without group commit,
//! recovery of a large log, compaction and index operations. Logs live under
//! `WARREN_BENCH_DIR` (default: the system temp dir), which must be a real disk for the fsync
//! figures to mean anything.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use warren_storage::index::{Checkpoint, IndexOp};
use warren_storage::record::{self, RecordHeader, RecordKind};
use warren_storage::{Index, Location, Lsn, SegmentId, SledIndex, StreamId, Wal, WalConfig};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("WARREN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn config(dir: &std::path::Path) -> WalConfig {
    WalConfig::new(dir)
}

fn record_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_encode_crc");
    // 64 KiB: the crc's wide kernels and the streaming copy into the batch (`copy.rs`) take over
    // from 16 KiB. Here the source is hot and the output reused, so the streaming copy shows only
    // its cost; its gain (a batch that does not evict the bodies) needs the broker around it.
    for size in [16usize, 1024, 65536] {
        let payload = vec![7u8; size];
        let header = RecordHeader {
            kind: RecordKind::Put,
            lsn: Lsn(10),
            durable_lsn: Lsn(9),
            stream: 3,
            seq: 99,
        };
        let mut out = Vec::with_capacity(4096);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                out.clear();
                record::encode_into(&mut out, &header, &[&payload]);
                out.len()
            })
        });
    }
    group.finish();
}

fn append_without_waiting(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_no_wait");
    for size in [16usize, 1024] {
        let dir = bench_dir();
        let wal = Wal::open_dir(config(dir.path())).unwrap();
        let payload = vec![1u8; size];
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                seq += 1;
                wal.append(StreamId(1), seq, &payload).unwrap()
            })
        });
        wal.sync().unwrap();
    }
    group.finish();
}

/// Appends from `appenders` logical appenders, each keeping `window` appends waiting for
/// durability (window 1: a publisher that waits for each confirm), until `total` are durable.
/// One thread drives them all through durability callbacks, as the broker's channel tasks will.
fn drive_durable(wal: &Wal, payload: &[u8], appenders: u64, window: u64, total: u64) -> Duration {
    let (done_sender, done) = mpsc::channel::<u64>();
    let mut next_seq = vec![0u64; appenders as usize];
    let mut issued = 0u64;
    let issue = |appender: u64, next_seq: &mut Vec<u64>| {
        let seq = next_seq[appender as usize];
        next_seq[appender as usize] += 1;
        let receipt = wal.append(StreamId(appender + 1), seq, payload).unwrap();
        let sender = done_sender.clone();
        wal.on_durable(
            receipt.lsn,
            Box::new(move |result| {
                result.unwrap();
                let _ = sender.send(appender);
            }),
        );
    };
    let start = Instant::now();
    for appender in 0..appenders {
        for _ in 0..window {
            if issued < total {
                issue(appender, &mut next_seq);
                issued += 1;
            }
        }
    }
    for _ in 0..total {
        let appender = done.recv().unwrap();
        if issued < total {
            issue(appender, &mut next_seq);
            issued += 1;
        }
    }
    start.elapsed()
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_durable");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for size in [16usize, 1024] {
        for (appenders, window) in [(1u64, 1u64), (8, 1), (64, 1), (64, 16)] {
            let dir = bench_dir();
            let wal = Wal::open_dir(config(dir.path())).unwrap();
            let payload = vec![2u8; size];
            group.throughput(Throughput::Elements(1));
            let name = format!("{appenders}_appenders_window_{window}");
            group.bench_function(BenchmarkId::new(format!("{size}B"), name), |b| {
                b.iter_custom(|iters| drive_durable(&wal, &payload, appenders, window, iters))
            });
        }
    }
    group.finish();
}

const RECOVERY_RECORDS: u64 = 1_000_000;

fn recovery(c: &mut Criterion) {
    let dir = bench_dir();
    let payload = vec![3u8; 1024];
    let built = Instant::now();
    {
        let wal = Wal::open_dir(config(dir.path())).unwrap();
        for seq in 0..RECOVERY_RECORDS {
            wal.append(StreamId(1), seq, &payload).unwrap();
        }
        wal.close().unwrap();
    }
    eprintln!(
        "recovery: wrote {RECOVERY_RECORDS} live 1 KiB records in {:?}",
        built.elapsed()
    );
    let mut group = c.benchmark_group("recovery_1m_live_1KiB");
    group.sample_size(10);
    group.bench_function("reopen_from_checkpoint", |b| {
        b.iter(|| {
            let wal = Wal::open_dir(config(dir.path())).unwrap();
            assert_eq!(wal.stream_live(StreamId(1)).records, RECOVERY_RECORDS);
            drop(wal);
        })
    });
    group.bench_function("rebuild_without_index", |b| {
        b.iter_batched(
            || std::fs::remove_dir_all(dir.path().join("index")).unwrap(),
            |()| {
                let wal = Wal::open_dir(config(dir.path())).unwrap();
                assert_eq!(wal.stream_live(StreamId(1)).records, RECOVERY_RECORDS);
                wal.close().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    let records = 64 * 1024u64;
    group.throughput(Throughput::Bytes(records / 4 * 1024));
    group.bench_function("move_quarter_live_of_64MiB", |b| {
        b.iter_batched(
            || {
                let dir = bench_dir();
                let mut config = config(dir.path());
                config.segment_bytes_max = 8 << 20;
                config.record_bytes_max = 1 << 20;
                config.background_maintenance = false;
                let wal = Wal::open_dir(config).unwrap();
                let payload = vec![4u8; 1024 - 48];
                for seq in 0..records {
                    wal.append(StreamId(1), seq, &payload).unwrap();
                }
                for seq in (0..records).filter(|s| s % 4 != 0) {
                    wal.delete(StreamId(1), seq).unwrap();
                }
                wal.sync().unwrap();
                wal.checkpoint().unwrap();
                (dir, wal)
            },
            |(dir, wal)| {
                let report = wal.compact().unwrap();
                assert!(report.segments_removed > 0);
                (dir, wal)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn index_operations(c: &mut Criterion) {
    let dir = bench_dir();
    let index = SledIndex::open(&dir.path().join("index"), 64 << 20).unwrap();
    let mut group = c.benchmark_group("sled_index");
    let batch = 10_000u64;
    let mut round = 0u64;
    group.throughput(Throughput::Elements(batch));
    group.bench_function("commit_10k_puts", |b| {
        b.iter(|| {
            round += 1;
            let ops: Vec<IndexOp> = (0..batch)
                .map(|i| IndexOp::Put {
                    stream: StreamId(1),
                    seq: round * batch + i,
                    location: Location {
                        segment: SegmentId(1),
                        offset: i * 1072,
                        frame_bytes: 1072,
                    },
                })
                .collect();
            let checkpoint = Checkpoint {
                next_lsn: Lsn(round * batch),
                segment: 1,
                offset: 0,
                segments: vec![],
                streams: vec![],
            };
            index.commit(&ops, &checkpoint).unwrap();
        })
    });
    group.throughput(Throughput::Elements(1));
    let mut seq = 0u64;
    group.bench_function("get", |b| {
        b.iter(|| {
            seq = (seq + 7919) % (round.max(1) * batch);
            index.get(StreamId(1), seq + batch).unwrap()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    record_encode,
    append_without_waiting,
    group_commit,
    compaction,
    index_operations,
    recovery
);
criterion_main!(benches);
