//! Simulated disk faults: torn and lost writes at a crash, failed writes and syncs, a full
//! disk, bit flips on read and media corruption. Each seeded test prints its seed on failure and
//! replays one seed with `SEED=n`.

mod common;

use common::{contents, payload, seeds, small_config, SeedReport, SimLog};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warren_storage::fs::FileSystem;
use warren_storage::{StorageError, StreamId};

const Q: StreamId = StreamId(1);

#[test]
fn crashes_keep_every_synced_record_and_invent_nothing() {
    for seed in seeds(150) {
        let _report = SeedReport(seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut config = small_config("/data");
        if seed % 2 == 1 {
            // Records below and above the direct threshold mixed: chunks that start small and
            // move into a direct buffer when a large record arrives, and batches written
            // through the page cache next to direct ones.
            config.direct_record_bytes_min = 700;
        }
        let mut log = SimLog::open(seed, config);
        let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut durable = 0;
        for round in 0..4 {
            for _ in 0..rng.gen_range(1..60) {
                let seq = written.len() as u64;
                let record = payload(1, seq, rng.gen_range(0..1500));
                log.wal().append(Q, seq, &record).unwrap();
                written.push((seq, record));
                if rng.gen_bool(0.1) {
                    log.wal().sync().unwrap();
                    durable = written.len();
                }
                if rng.gen_bool(0.03) {
                    log.wal().checkpoint().unwrap();
                }
            }
            if rng.gen_bool(0.2) {
                log.crash_losing_index();
            } else {
                log.crash();
            }
            log.reopen();
            let recovered = log.wal().read_stream(Q, 0, usize::MAX).unwrap();
            assert!(
                recovered.len() >= durable,
                "round {round}: {} records recovered, {durable} were synced",
                recovered.len()
            );
            assert_eq!(
                recovered[..],
                written[..recovered.len()],
                "round {round}: not a prefix of what was written"
            );
            written.truncate(recovered.len());
            durable = written.len();
        }
    }
}

#[test]
fn a_failed_fsync_poisons_the_log_and_loses_nothing_synced() {
    for fail_write in [false, true] {
        let mut log = SimLog::open(11, small_config("/data"));
        for seq in 0..20 {
            log.wal().append(Q, seq, &payload(1, seq, 100)).unwrap();
        }
        log.wal().sync().unwrap();
        if fail_write {
            log.fs.fail_next_write();
        } else {
            log.fs.fail_next_sync();
        }
        let receipt = log.wal().append(Q, 20, b"never confirmed").unwrap();
        let error = log.wal().wait_durable(receipt.lsn).unwrap_err();
        assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
        // Every later write fails too: it is never retried as if nothing happened.
        let error = log.wal().append(Q, 21, b"refused").unwrap_err();
        assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
        assert!(log.wal().sync().is_err());
        // Reopening recovers everything that was synced.
        log.crash();
        log.reopen();
        let recovered = log.wal().read_stream(Q, 0, usize::MAX).unwrap();
        assert!(
            recovered.len() == 20 || recovered.len() == 21,
            "{}",
            recovered.len()
        );
        for (seq, record) in recovered.iter().take(20) {
            assert_eq!(record, &payload(1, *seq, 100));
        }
    }
}

/// A roll only takes a file (a retired segment's, already open) or creates and allocates one
/// (under a temporary name); the header's sync, the rename to the segment's name and the
/// directory sync are the log writer's, done with the batch that carries the header, before
/// that batch is reported durable. (Done by the roll, they stalled the appending thread, a
/// broker's whole runtime, with the log's lock held.) So a disk that fails its next sync fails
/// that batch, and the log is poisoned; the append that rolled succeeds.
#[test]
fn a_roll_leaves_the_disk_to_the_writer_and_a_failed_sync_fails_its_batch() {
    for reuse in [true, false] {
        let mut log = SimLog::open(13, small_config("/data"));
        let mut seq = 0;
        if reuse {
            for _ in 0..60 {
                log.wal().append(Q, seq, &payload(1, seq, 300)).unwrap();
                seq += 1;
            }
            log.wal().delete_range(Q, 0, seq).unwrap();
            log.wal().sync().unwrap();
            log.wal().compact_all().unwrap();
            assert!(log.wal().stats().reserve_files > 0, "retired files wait");
        }
        // Fill the active segment until a 2000-byte record (2048 framed, 48 for the seal) no
        // longer fits in it; 300-byte ones still do.
        let segment_bytes = log.config.segment_bytes_max;
        let last = loop {
            let receipt = log.wal().append(Q, seq, &payload(1, seq, 300)).unwrap();
            seq += 1;
            let location = receipt.location;
            if location.offset + u64::from(location.frame_bytes) > segment_bytes - 2096 {
                break location;
            }
        };
        log.wal().sync().unwrap();
        let expected = contents(log.wal(), &[1]);
        let dir_syncs = log.fs.counters().dir_syncs;
        log.fs.fail_next_sync();
        let receipt = log
            .wal()
            .append(Q, seq, &payload(1, seq, 2000))
            .expect("the roll waits on no disk operation");
        assert_eq!(receipt.location.segment.0, last.segment.0 + 1, "it rolled");
        let error = log.wal().wait_durable(receipt.lsn).unwrap_err();
        assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
        assert_eq!(
            log.fs.counters().dir_syncs,
            dir_syncs,
            "the new segment is not named before its batch is synced"
        );
        let segment_name = format!("{:020}.wal", receipt.location.segment.0);
        let names = log.fs.list(std::path::Path::new("/data")).unwrap();
        assert!(!names.contains(&segment_name), "reuse {reuse}: {names:?}");
        if !reuse {
            assert!(
                names.contains(&format!("{segment_name}.new")),
                "a new file waits under a temporary name: {names:?}"
            );
        }
        // The file never got the segment's name: the reopened log ends where the last sync
        // left it, and removes the file rather than reusing it.
        log.crash();
        log.reopen();
        assert_eq!(contents(log.wal(), &[1]), expected, "reuse {reuse}");
        let names = log.fs.list(std::path::Path::new("/data")).unwrap();
        assert!(
            names
                .iter()
                .all(|name| !name.ends_with(".free") && !name.ends_with(".new")),
            "reuse {reuse}: {names:?}"
        );
        let receipt = log.wal().append(Q, seq, &payload(1, seq, 2000)).unwrap();
        log.wal().wait_durable(receipt.lsn).unwrap();
    }
}

#[test]
fn a_full_disk_fails_only_the_append_that_needs_space() {
    let mut log = SimLog::open(12, small_config("/data"));
    let mut seq = 0;
    log.wal().append(Q, seq, &payload(1, seq, 500)).unwrap();
    log.wal().sync().unwrap();
    log.fs.set_capacity(Some(log.fs.used_bytes()));
    let error = loop {
        seq += 1;
        match log.wal().append(Q, seq, &payload(1, seq, 500)) {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, StorageError::NoSpace { .. }), "{error}");
    assert!(error.is_retryable());
    // Everything before the refused append is intact and becomes durable.
    log.wal().sync().unwrap();
    let stored = log.wal().read_stream(Q, 0, usize::MAX).unwrap();
    assert_eq!(
        stored.len() as u64,
        seq,
        "the refused record must not exist"
    );
    // Once space is freed, the same append succeeds.
    log.fs.set_capacity(None);
    let receipt = log.wal().append(Q, seq, &payload(1, seq, 500)).unwrap();
    log.wal().wait_durable(receipt.lsn).unwrap();
    log.crash();
    log.reopen();
    assert_eq!(
        log.wal().read_stream(Q, 0, usize::MAX).unwrap().len() as u64,
        seq + 1
    );
}

#[test]
fn bit_flips_on_read_are_reported_never_returned_as_data() {
    let log = SimLog::open(13, small_config("/data"));
    for seq in 0..50 {
        log.wal().append(Q, seq, &payload(1, seq, 300)).unwrap();
    }
    log.wal().sync().unwrap();
    log.fs.set_read_flip_per_million(1_000_000);
    let mut detected = 0;
    for seq in 0..50 {
        match log.wal().get(Q, seq) {
            // A flip in the padding after a payload changes nothing that is read.
            Ok(Some(record)) => assert_eq!(record, payload(1, seq, 300)),
            Ok(None) => panic!("record {seq} vanished"),
            Err(StorageError::ChecksumOnRead { .. }) => detected += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(
        detected > 40,
        "only {detected} of 50 flipped reads were detected"
    );
    log.fs.set_read_flip_per_million(0);
    assert_eq!(log.wal().get(Q, 7).unwrap(), Some(payload(1, 7, 300)));
}

/// Writes records, syncs, then writes and syncs more, so that later records prove the earlier
/// ones were synced. Returns the log and the location of record `victim`.
fn log_with_synced_history(seed: u64, victim: u64) -> (SimLog, warren_storage::Location) {
    let log = SimLog::open(seed, small_config("/data"));
    for seq in 0..40 {
        log.wal().append(Q, seq, &payload(1, seq, 100)).unwrap();
    }
    log.wal().sync().unwrap();
    for seq in 40..45 {
        log.wal().append(Q, seq, &payload(1, seq, 100)).unwrap();
    }
    log.wal().sync().unwrap();
    let location = log.wal().locate(Q, victim).unwrap().unwrap();
    (log, location)
}

#[test]
fn corruption_of_synced_records_refuses_to_open_naming_segment_and_offset() {
    for (victim, lose_index) in [(3, true), (38, false), (38, true)] {
        let (mut log, location) = log_with_synced_history(14, victim);
        if victim < 10 {
            log.wal().checkpoint().unwrap(); // victim is below the checkpoint: a rebuild reads it
        }
        let path = log.config.segment_path(location.segment);
        log.fs.corrupt_byte(&path, location.offset + 60, 0x10);
        if lose_index {
            log.crash_losing_index();
        } else {
            log.crash();
        }
        match log.try_reopen() {
            Err(StorageError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(
                    (segment, offset),
                    (location.segment, location.offset),
                    "victim {victim}"
                );
            }
            Err(other) => panic!("victim {victim}: expected Corrupt, got {other}"),
            Ok(()) => panic!("victim {victim}: a corrupt synced record was skipped silently"),
        }
    }
}

#[test]
fn corruption_inside_the_checkpointed_region_is_refused_too() {
    let (mut log, location) = log_with_synced_history(15, 20);
    log.wal().checkpoint().unwrap();
    let checkpoint_segment_has_victim = log.wal().stats().segments == 1
        || log.wal().locate(Q, 44).unwrap().unwrap().segment == location.segment;
    let path = log.config.segment_path(location.segment);
    log.fs.corrupt_byte(&path, location.offset + 60, 0x01);
    log.crash();
    let result = log.try_reopen();
    if checkpoint_segment_has_victim {
        assert!(
            matches!(result, Err(StorageError::Corrupt { .. })),
            "{result:?}"
        );
    } else {
        // Sealed segments below the checkpoint are not re-read at open; reading the record is
        // what reports it.
        result.unwrap();
        let error = log.wal().get(Q, 20).unwrap_err();
        assert!(
            matches!(error, StorageError::ChecksumOnRead { .. }),
            "{error}"
        );
    }
}

#[test]
fn a_torn_tail_is_truncated_and_appends_continue_after_it() {
    let mut log = SimLog::open(16, small_config("/data"));
    for seq in 0..10 {
        log.wal().append(Q, seq, &payload(1, seq, 100)).unwrap();
    }
    log.wal().sync().unwrap();
    let tail = log.wal().append(Q, 10, &payload(1, 10, 100)).unwrap();
    log.wal().sync().unwrap();
    // Damage the last record, after which nothing claims it was synced: a torn write.
    let path = log.config.segment_path(tail.location.segment);
    log.fs.corrupt_byte(&path, tail.location.offset + 50, 0xFF);
    log.crash();
    log.reopen();
    assert_eq!(log.wal().read_stream(Q, 0, usize::MAX).unwrap().len(), 10);
    log.wal().append(Q, 10, b"rewritten").unwrap();
    log.wal().sync().unwrap();
    let before = contents(log.wal(), &[1]);
    log.crash();
    log.reopen();
    assert_eq!(contents(log.wal(), &[1]), before);
}
