//! Behaviour of the log on a healthy disk (simulated and real): appends, reads, deletes,
//! definitions, group commit, segment roll, checkpoints, compaction and reopening.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{contents, payload, small_config, SimLog};
use warren_storage::fs::FileSystem;
use warren_storage::{StreamId, Wal, WalConfig};

const Q1: StreamId = StreamId(1);
const Q2: StreamId = StreamId(2);

#[test]
fn append_read_delete_and_definitions() {
    let mut log = SimLog::open(1, small_config("/data"));
    let wal = log.wal();
    let a = wal.append(Q1, 0, b"first").unwrap();
    wal.append(Q1, 1, b"second").unwrap();
    wal.append(Q2, 0, b"other stream").unwrap();
    // Readable before it is durable.
    assert_eq!(wal.get(Q1, 0).unwrap().as_deref(), Some(&b"first"[..]));
    assert_eq!(wal.read_at(a.location).unwrap().payload, b"first");
    wal.append(Q1, 0, b"replaced").unwrap();
    assert!(wal.delete(Q1, 1).unwrap().is_some());
    assert_eq!(
        wal.delete(Q1, 1).unwrap(),
        None,
        "deleting twice writes nothing"
    );
    wal.kv_put(b"exchange/a", b"fanout").unwrap();
    wal.kv_put(b"queue/x", b"durable").unwrap();
    wal.kv_put(b"queue/y", b"durable").unwrap();
    wal.kv_delete(b"queue/y").unwrap();
    wal.sync().unwrap();

    let expected = contents(wal, &[1, 2]);
    assert_eq!(expected.streams.len(), 2);
    assert_eq!(expected.streams[&(1, 0)], b"replaced");
    assert_eq!(
        wal.kv_prefix(b"queue/").unwrap(),
        vec![(b"queue/x".to_vec(), b"durable".to_vec())]
    );
    assert_eq!(wal.stream_live(Q1).records, 1);

    log.close();
    log.reopen();
    assert_eq!(
        contents(log.wal(), &[1, 2]),
        expected,
        "a clean restart keeps everything"
    );
}

#[test]
fn delete_range_removes_only_the_range_and_keys_can_be_reused() {
    let log = SimLog::open(2, small_config("/data"));
    let wal = log.wal();
    for seq in 0..20 {
        wal.append(Q1, seq, &payload(1, seq, 40)).unwrap();
    }
    // Like a raft log truncation: drop 10.. and write new entries under the same keys.
    wal.delete_range(Q1, 10, u64::MAX).unwrap();
    wal.append(Q1, 10, b"new ten").unwrap();
    // Like a raft purge: drop everything below 5.
    wal.delete_range(Q1, 0, 5).unwrap();
    let seqs: Vec<u64> = wal
        .read_stream(Q1, 0, 100)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
    assert_eq!(wal.get(Q1, 10).unwrap().as_deref(), Some(&b"new ten"[..]));
    assert_eq!(
        wal.read_stream(Q1, 7, 2).unwrap().len(),
        2,
        "limit is honoured"
    );
}

#[test]
fn group_commit_batches_concurrent_appenders() {
    let mut log = SimLog::open(
        3,
        WalConfig {
            background_maintenance: false,
            ..WalConfig::new("/data")
        },
    );
    let wal = Arc::new(log.wal.take().expect("open"));
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for seq in 0..200 {
                    let receipt = wal
                        .append(StreamId(t + 1), seq, &payload(t, seq, 100))
                        .unwrap();
                    wal.wait_durable(receipt.lsn).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.counters.records, 3200);
    assert!(
        stats.counters.batches < 3200,
        "no batching happened: {stats:?}"
    );
    assert_eq!(stats.durable_lsn.0, 3200);
}

/// After the first batch of a segment (whose lead, the header, is not in memory), every batch is
/// written direct, rewriting the block it starts in; what is read back, after a crash too, is
/// exactly what was appended.
#[test]
fn batches_are_written_direct_from_the_second_on_and_read_back_unchanged() {
    let mut config = small_config("/data");
    config.segment_bytes_max = 64 * 1024;
    let mut log = SimLog::open(11, config);
    for seq in 0..300u64 {
        let wal = log.wal();
        let receipt = wal
            .append(Q1, seq, &payload(1, seq, 37 + (seq as usize * 53) % 700))
            .unwrap();
        wal.wait_durable(receipt.lsn).unwrap();
        if seq == 150 {
            let expected = contents(log.wal(), &[1]);
            log.crash();
            log.reopen();
            assert_eq!(contents(log.wal(), &[1]), expected, "after a crash");
        }
    }
    let stats = log.wal().stats();
    assert!(
        stats.counters.direct_writes > 5 * stats.counters.buffered_writes,
        "most batches go direct: {:?}",
        stats.counters
    );
    // The disk saw them as direct writes (it checks their alignment); its count spans the
    // reopen, the log's does not.
    assert!(log.fs.counters().direct_writes >= stats.counters.direct_writes);
    let expected = contents(log.wal(), &[1]);
    assert_eq!(expected.streams.len(), 300);
    log.close();
    log.reopen();
    assert_eq!(contents(log.wal(), &[1]), expected, "after a clean restart");
}

#[test]
fn durability_callbacks_fire_in_order_once_synced() {
    let log = SimLog::open(4, small_config("/data"));
    let wal = log.wal();
    let (sender, receiver) = std::sync::mpsc::channel();
    for seq in 0..50 {
        let receipt = wal.append(Q1, seq, &payload(1, seq, 30)).unwrap();
        let sender = sender.clone();
        wal.on_durable(
            receipt.lsn,
            Box::new(move |result| sender.send((seq, result.is_ok())).unwrap()),
        );
    }
    let fired: Vec<(u64, bool)> = (0..50).map(|_| receiver.recv().unwrap()).collect();
    assert!(fired.iter().all(|(_, ok)| *ok));
    assert!(wal.durable_lsn().0 >= 50);
}

#[test]
fn segments_roll_and_recovery_reads_across_them() {
    let mut log = SimLog::open(5, small_config("/data"));
    for seq in 0..300 {
        log.wal().append(Q1, seq, &payload(1, seq, 200)).unwrap();
    }
    log.wal().sync().unwrap();
    assert!(log.wal().stats().segments > 5, "{:?}", log.wal().stats());
    let before = contents(log.wal(), &[1]);
    log.crash(); // no clean close: replay from the last checkpoint
    log.reopen();
    assert_eq!(contents(log.wal(), &[1]), before);
    // Appends continue after recovery with increasing LSNs.
    let next = log.wal().append(Q1, 1000, b"after").unwrap();
    assert!(next.lsn.0 > 300);
}

#[test]
fn compaction_bounds_disk_use_while_the_oldest_record_stays_live() {
    let mut config = small_config("/data");
    config.checkpoint_ops_max = 10_000;
    let mut log = SimLog::open(6, config.clone());
    let wal = log.wal();
    // One old record that is never acked, then a long stream of records acked as they go.
    wal.append(Q1, 0, b"oldest, never acked").unwrap();
    for seq in 1..2000 {
        wal.append(Q2, seq, &payload(2, seq, 300)).unwrap();
        if seq > 20 {
            wal.delete(Q2, seq - 20).unwrap();
        }
    }
    wal.sync().unwrap();
    let before = wal.stats();
    let report = wal.compact().unwrap();
    let after = wal.stats();
    assert!(report.segments_removed > 0, "{report:?}");
    let sealed_disk = after.disk_bytes - config.segment_bytes_max;
    assert!(
        sealed_disk <= 2 * after.live_bytes + config.segment_bytes_max,
        "disk {} live {} (before: disk {})",
        after.disk_bytes,
        after.live_bytes,
        before.disk_bytes
    );
    assert!(
        after.disk_bytes < before.disk_bytes / 4,
        "before {before:?} after {after:?}"
    );
    let expected = contents(wal, &[1, 2]);
    assert_eq!(expected.streams.len(), 21);
    assert_eq!(
        wal.get(Q1, 0).unwrap().as_deref(),
        Some(&b"oldest, never acked"[..])
    );

    // Both recovery paths agree after compaction: replay from the checkpoint, and a full
    // rebuild from the log (which depends on tombstones having been kept or dropped correctly).
    log.crash();
    log.reopen();
    assert_eq!(contents(log.wal(), &[1, 2]), expected);
    log.crash_losing_index();
    log.reopen();
    assert_eq!(
        contents(log.wal(), &[1, 2]),
        expected,
        "rebuild from the log alone"
    );
}

#[test]
fn lost_index_is_rebuilt_from_the_log() {
    let mut log = SimLog::open(7, small_config("/data"));
    for seq in 0..100 {
        log.wal().append(Q1, seq, &payload(1, seq, 100)).unwrap();
    }
    log.wal().delete_range(Q1, 0, 50).unwrap();
    log.wal().kv_put(b"vhost/", b"/").unwrap();
    log.wal().checkpoint().unwrap();
    log.wal().sync().unwrap();
    let expected = contents(log.wal(), &[1]);
    log.crash_losing_index();
    log.reopen();
    assert_eq!(contents(log.wal(), &[1]), expected);
}

#[test]
fn oversize_records_are_refused_and_nothing_is_written() {
    let log = SimLog::open(8, small_config("/data"));
    let wal = log.wal();
    let err = wal.append(Q1, 0, &vec![0u8; 4096]).unwrap_err();
    assert!(
        matches!(err, warren_storage::StorageError::RecordTooLarge { .. }),
        "{err}"
    );
    assert_eq!(wal.next_lsn().0, 1);
}

#[test]
fn real_disk_and_sled_index_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path());
    config.segment_bytes_max = 1 << 20;
    config.record_bytes_max = 64 << 10;
    config.background_maintenance = false;
    let wal = Wal::open_dir(config.clone()).unwrap();
    for seq in 0..3000 {
        wal.append(Q1, seq, &payload(1, seq, 700)).unwrap();
    }
    for seq in 0..1000 {
        wal.delete(Q1, seq).unwrap();
    }
    wal.kv_put(b"queue/orders", b"{durable:true}").unwrap();
    wal.sync().unwrap();
    let expected = contents(&wal, &[1]);
    wal.close().unwrap();

    let wal = Wal::open_dir(config.clone()).unwrap();
    assert_eq!(contents(&wal, &[1]), expected);
    wal.compact().unwrap();
    assert_eq!(contents(&wal, &[1]), expected);
    drop(wal); // no clean close this time

    let wal = Wal::open_dir(config).unwrap();
    assert_eq!(contents(&wal, &[1]), expected);
}

/// Fills the rest of the active segment with records of `stream` (seqs from `first_seq`), so the
/// next append starts a new segment. Returns the seqs written.
fn fill_segment(log: &SimLog, stream: StreamId, first_seq: u64) -> Vec<u64> {
    let wal = log.wal();
    let start = wal.stats().segments;
    let mut seq = first_seq;
    let mut written = Vec::new();
    loop {
        let receipt = wal
            .append(stream, seq, &payload(stream.0, seq, 900))
            .unwrap();
        if wal.stats().segments > start {
            // That one landed in a new segment: take it back out of the count by deleting it.
            wal.delete(stream, seq).unwrap();
            assert!(receipt.location.segment.0 as usize > start);
            return written;
        }
        written.push(seq);
        seq += 1;
    }
}

const X: StreamId = StreamId(7);

/// A record in a mostly-live segment, deleted by a tombstone in a mostly-dead one that gets
/// compacted: the tombstone must move, or a rebuild from the log resurrects the record.
#[test]
fn compaction_keeps_tombstones_whose_targets_survive() {
    let mut log = SimLog::open(20, small_config("/data"));
    log.wal().append(X, 0, b"acked long ago").unwrap();
    let target = log.wal().locate(X, 0).unwrap().unwrap().segment;
    fill_segment(&log, Q1, 0); // segment A: mostly live
    log.wal().delete(X, 0).unwrap(); // tombstone in segment B
    let dead = fill_segment(&log, Q2, 0);
    for seq in dead {
        log.wal().delete(Q2, seq).unwrap(); // B becomes mostly dead
    }
    fill_segment(&log, Q2, 1000);
    log.wal().sync().unwrap();
    let report = log.wal().compact().unwrap();
    assert!(
        report.segments_removed >= 1 && report.tombstones_moved >= 1,
        "{report:?}"
    );
    assert!(
        log.wal().segment_live().iter().any(|(id, _)| *id == target),
        "segment A must survive"
    );
    let expected = contents(log.wal(), &[1, 2, 7]);
    assert!(!expected.streams.contains_key(&(7, 0)));
    log.crash_losing_index();
    log.reopen();
    assert_eq!(
        contents(log.wal(), &[1, 2, 7]),
        expected,
        "deleted record resurrected by a rebuild"
    );
}

/// A moved tombstone must not delete a newer record that reuses its key.
#[test]
fn moved_tombstones_do_not_delete_newer_records_with_the_same_key() {
    let mut log = SimLog::open(21, small_config("/data"));
    log.wal().append(X, 0, b"old value").unwrap();
    fill_segment(&log, Q1, 0); // segment A: mostly live
    log.wal().delete(X, 0).unwrap(); // tombstone in segment B
    let dead = fill_segment(&log, Q2, 0);
    for seq in dead {
        log.wal().delete(Q2, seq).unwrap(); // B becomes mostly dead
    }
    log.wal().append(X, 0, b"new value").unwrap(); // the key reused in segment C
    fill_segment(&log, Q1, 1000); // C: mostly live, survives
    let reused_in = log.wal().locate(X, 0).unwrap().unwrap().segment;
    fill_segment(&log, Q2, 1000);
    log.wal().sync().unwrap();
    let report = log.wal().compact().unwrap();
    assert!(report.tombstones_moved >= 1, "{report:?}");
    assert!(
        log.wal()
            .segment_live()
            .iter()
            .any(|(id, _)| *id == reused_in),
        "segment C must survive"
    );
    assert_eq!(
        log.wal().get(X, 0).unwrap().as_deref(),
        Some(&b"new value"[..])
    );
    log.crash_losing_index();
    log.reopen();
    assert_eq!(
        log.wal().get(X, 0).unwrap().as_deref(),
        Some(&b"new value"[..]),
        "rebuild lost the newer record"
    );
}

#[test]
fn prepared_segments_roll_and_survive_crashes() {
    let mut config = small_config("/data");
    config.prepare_segments = true;
    let mut log = SimLog::open(22, config);
    let mut written = 0;
    for round in 0..4 {
        for _ in 0..200 {
            log.wal()
                .append(Q1, written, &payload(1, written, 300))
                .unwrap();
            written += 1;
        }
        log.wal().sync().unwrap();
        let expected = contents(log.wal(), &[1]);
        assert_eq!(expected.streams.len() as u64, written);
        // Crashes may leave a half-filled spare behind; the next open removes it.
        log.crash();
        log.reopen();
        assert_eq!(contents(log.wal(), &[1]), expected, "round {round}");
    }
    assert!(log.wal().stats().segments > 10);
}

/// Names of the retired segment files waiting for reuse.
fn retired(log: &SimLog) -> Vec<String> {
    let mut names = log.fs.list(Path::new("/data")).unwrap();
    names.retain(|name| name.ends_with(".free"));
    names
}

#[test]
fn retired_segments_are_reused_and_their_old_records_never_come_back() {
    for seed in common::seeds(8) {
        let _report = common::SeedReport(seed);
        let mut log = SimLog::open(seed, small_config("/data"));
        let mut next = 0u64;
        for round in 0..6 {
            for _ in 0..150 {
                log.wal().append(Q1, next, &payload(1, next, 300)).unwrap();
                next += 1;
            }
            // Settle all but the newest few: the older segments die and are retired.
            log.wal().delete_range(Q1, 0, next - 5).unwrap();
            log.wal().sync().unwrap();
            let report = log.wal().compact_all().unwrap();
            assert!(report.segments_removed >= 5, "round {round}: {report:?}");
            let waiting = retired(&log);
            assert_eq!(waiting.len(), 4, "round {round}: at most four are kept");
            let stats = log.wal().stats();
            assert_eq!(
                (stats.reserve_files, stats.reserve_bytes),
                (4, 4 * log.config.segment_bytes_max),
                "round {round}: the retired files are counted"
            );
            // The next rolls (about three) take them instead of allocating new files, so the
            // active segment is a reused one too. Their old frames (records of the same stream,
            // some with the same seqs) must never read as live.
            for _ in 0..70 {
                log.wal().append(Q1, next, &payload(1, next, 300)).unwrap();
                next += 1;
            }
            log.wal().sync().unwrap();
            let left = retired(&log);
            assert!(
                left.len() <= 1 && left.iter().all(|name| waiting.contains(name)),
                "round {round}: the rolls did not take {waiting:?}: {left:?} wait"
            );
            assert_eq!(log.wal().stats().reserve_files, left.len(), "round {round}");
            let expected = contents(log.wal(), &[1]);
            assert_eq!(expected.streams.len(), 75, "round {round}");
            match round % 3 {
                0 => log.crash(),
                1 => log.crash_losing_index(),
                _ => log.close(),
            }
            log.reopen();
            if round % 3 == 2 {
                // The close sealed the log where it ends; without the seal the reused file's
                // old frames after it would read as a torn tail to truncate.
                assert!(!log.wal().stats().torn_tail_repaired, "round {round}");
            }
            assert_eq!(contents(log.wal(), &[1]), expected, "round {round}");
        }
    }
}

#[test]
fn compaction_moves_definitions_out_of_a_dead_segment_without_reading_it() {
    let mut log = SimLog::open(9, small_config("/data"));
    let definitions: Vec<(Vec<u8>, Vec<u8>)> = (0..4)
        .map(|i| (format!("queue/q{i}").into_bytes(), vec![i as u8; 40]))
        .collect();
    let mut seq = 0;
    for (key, value) in &definitions {
        // Spread over several segments, between messages that are then all settled.
        log.wal().kv_put(key, value).unwrap();
        for _ in 0..40 {
            log.wal().append(Q1, seq, &payload(1, seq, 300)).unwrap();
            seq += 1;
        }
    }
    log.wal().delete_range(Q1, 0, seq).unwrap();
    log.wal().sync().unwrap();
    let segments = log.wal().stats().segments;
    assert!(segments >= 5, "{segments}");
    let read_before = log.fs.counters().read_bytes;
    let report = log.wal().compact_all().unwrap();
    let read = log.fs.counters().read_bytes - read_before;
    assert_eq!(report.records_moved, 4, "{report:?}");
    assert_eq!(report.segments_removed, segments - 1, "{report:?}");
    assert!(
        read < log.config.segment_bytes_max,
        "compaction read {read} bytes; the index says where the definitions are"
    );
    let expected = contents(log.wal(), &[1]);
    assert_eq!(expected.kv, definitions.iter().cloned().collect());
    log.crash();
    log.reopen();
    assert_eq!(contents(log.wal(), &[1]), expected);
}

#[test]
fn reading_a_stream_from_any_point_with_a_limit_merges_the_index_and_the_changes_since() {
    let mut config = small_config("/data");
    config.segment_bytes_max = 1 << 20;
    config.checkpoint_ops_max = 100_000; // the changes below stay in the overlay
    let log = SimLog::open(12, config);
    let wal = log.wal();
    let mut model = std::collections::BTreeMap::new();
    for seq in 0..3000u64 {
        wal.append(Q1, seq, &payload(1, seq, 20)).unwrap();
        model.insert(seq, payload(1, seq, 20));
    }
    wal.sync().unwrap();
    wal.checkpoint().unwrap(); // these now live in the index
                               // Since the checkpoint: deletions hiding index entries, replacements, new records.
    for seq in (0..3000u64).filter(|s| s % 3 == 0 || (1000..2500).contains(s)) {
        wal.delete(Q1, seq).unwrap();
        model.remove(&seq);
    }
    for seq in (0..3000u64).step_by(7).chain(3000..3400) {
        wal.append(Q1, seq, &payload(1, seq + 1, 20)).unwrap();
        model.insert(seq, payload(1, seq + 1, 20));
    }
    for (from, limit) in [
        (0, 1),
        (0, 100),
        (999, 5),
        (1000, 50),
        (1100, 1),
        (2400, 200),
        (3399, 3),
        (0, usize::MAX),
    ] {
        let got = wal.read_stream(Q1, from, limit).unwrap();
        let want: Vec<(u64, Vec<u8>)> = model
            .range(from..)
            .take(limit)
            .map(|(seq, value)| (*seq, value.clone()))
            .collect();
        assert_eq!(got, want, "from {from}, limit {limit}");
    }
}

#[test]
fn retired_and_spare_files_are_removed_at_open_not_reused() {
    let mut config = small_config("/data");
    config.prepare_segments = true;
    let mut log = SimLog::open(5, config);
    for seq in 0..60 {
        log.wal().append(Q1, seq, &payload(1, seq, 300)).unwrap();
    }
    log.wal().delete_range(Q1, 0, 60).unwrap();
    log.wal().sync().unwrap();
    log.wal().compact_all().unwrap();
    assert!(!retired(&log).is_empty());
    let expected = contents(log.wal(), &[1]);
    // A retired file whose activation a crash interrupted may hold frames of the segment it was
    // becoming, with LSNs above its bound; nothing at open tells such a file from the others.
    log.crash();
    log.reopen();
    let names = log.fs.list(Path::new("/data")).unwrap();
    assert!(
        names.iter().all(|n| !n.ends_with(".free")),
        "retired files are removed at open: {names:?}"
    );
    assert_eq!(contents(log.wal(), &[1]), expected);
    // The rolls after the open take the spare the preparer zero-fills (or new files).
    for seq in 60..200 {
        log.wal().append(Q1, seq, &payload(1, seq, 300)).unwrap();
    }
    log.wal().sync().unwrap();
    let expected = contents(log.wal(), &[1]);
    log.close();
    log.reopen();
    assert_eq!(contents(log.wal(), &[1]), expected);
}

#[test]
fn a_second_open_of_a_directory_in_use_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path());
    config.background_maintenance = false;
    let wal = Wal::open_dir(config.clone()).unwrap();
    wal.append(Q1, 0, &payload(1, 0, 100)).unwrap();
    wal.sync().unwrap();
    let expected = contents(&wal, &[1]);
    match Wal::open_dir(config.clone()) {
        Err(warren_storage::StorageError::InUse { path }) => assert!(path.ends_with("LOCK")),
        Err(other) => panic!("expected InUse, got {other}"),
        Ok(_) => panic!("a second open of a directory in use succeeded"),
    }
    assert_eq!(contents(&wal, &[1]), expected, "the first log is untouched");
    wal.close().unwrap();
    let again = Wal::open_dir(config).unwrap();
    assert_eq!(contents(&again, &[1]), expected, "free again once closed");
}

/// A new log starts in a zero-filled segment, as every later one is: on ext4, a segment that
/// was only fallocated holds unwritten extents, and every sync into it converts some and writes
/// the inode too (`filefrag` shows them). Skipped where `filefrag` or FIEMAP is unavailable.
#[test]
fn a_new_log_starts_in_a_segment_with_no_unwritten_extents() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path());
    config.background_maintenance = false;
    let wal = Wal::open_dir(config.clone()).unwrap();
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "wal"))
        .expect("a segment file");
    let output = match std::process::Command::new("filefrag")
        .arg("-v")
        .arg(&segment)
        .output()
    {
        Ok(output) if output.status.success() => output,
        _ => {
            eprintln!("skipped: filefrag is unavailable or this file system has no FIEMAP");
            return;
        }
    };
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("extent"),
        "unexpected filefrag output: {report}"
    );
    assert!(
        !report.contains("unwritten"),
        "the first segment has unwritten extents:\n{report}"
    );
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        config.segment_bytes_max
    );
    drop(wal);
}

/// A batch of settles alone goes the way the batch before it went: through the page cache
/// after a direct write, the kernel would first read back from the device the block the
/// settles start in (a third of the batches with 64 KiB messages did).
#[test]
fn a_batch_of_settles_alone_is_written_the_way_the_batch_before_it_was() {
    let mut config = small_config("/data");
    config.segment_bytes_max = 1 << 20;
    config.record_bytes_max = 256 << 10;
    config.pending_bytes_max = 1 << 20;
    config.direct_record_bytes_min = 16 << 10;
    let log = SimLog::open(9, config);
    let wal = log.wal();
    let writes = || {
        let c = wal.stats().counters;
        (c.direct_writes, c.buffered_writes)
    };
    let large = vec![5u8; 70_000];
    // The first batch after an open has no lead at hand: through the page cache.
    wal.append(Q1, 0, &large).unwrap();
    wal.sync().unwrap();
    assert_eq!(writes(), (0, 1));
    wal.append(Q1, 1, &large).unwrap();
    wal.sync().unwrap();
    assert_eq!(writes(), (1, 1), "a large message goes direct");
    wal.delete(Q1, 0).unwrap();
    wal.sync().unwrap();
    assert_eq!(
        writes(),
        (2, 1),
        "settles alone after a direct batch: direct"
    );
    wal.append(Q1, 2, &[1u8; 1000]).unwrap();
    wal.sync().unwrap();
    assert_eq!(writes(), (2, 2), "a small message: page cache");
    wal.delete(Q1, 1).unwrap();
    wal.sync().unwrap();
    assert_eq!(
        writes(),
        (2, 3),
        "settles alone after a buffered batch: page cache"
    );
    assert_eq!(wal.get(Q1, 2).unwrap().as_deref(), Some(&[1u8; 1000][..]));
    assert_eq!(wal.get(Q1, 0).unwrap(), None);
    assert_eq!(wal.get(Q1, 1).unwrap(), None);
}
