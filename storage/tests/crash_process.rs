//! Process crash test in the spirit of sled's: this test binary re-executes itself as a child
//! (`child_writer`, ignored when run normally) that appends to a real log on disk with four
//! threads, one stream each, and deletes ("acks") each stream's records in order behind the
//! appends. It prints `D stream seq` when an append is durable and `A stream seq` when an ack
//! is. The parent SIGKILLs it at a random moment, reopens the log, and checks for every stream:
//! the live records form one contiguous run (nothing follows a gap), every record reported
//! durable and not reported acked is there with its exact payload, and no record reported acked
//! is back. Then the next child continues from the recovered state.
//!
//! `WARREN_CRASH_ITERATIONS` (default 12) and `WARREN_CRASH_SECONDS` (default 60) bound the run;
//! `SEED` replays the kill timings.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use warren_storage::{StreamId, Wal, WalConfig};

const CHILD_DIR_VAR: &str = "WARREN_CRASH_CHILD_DIR";
const WRITERS: u64 = 4;
/// Acks trail appends by this many records.
const ACK_LAG: u64 = 64;

fn config(dir: &Path) -> WalConfig {
    let mut config = WalConfig::new(dir);
    config.segment_bytes_max = 1 << 20;
    config.record_bytes_max = 64 << 10;
    // Every batch direct (O_DIRECT on the real disk), whatever its records' size.
    config.direct_record_bytes_min = 0;
    config.checkpoint_ops_max = 2_000;
    config.checkpoint_interval_ms = 50;
    config
}

fn payload(stream: u64, seq: u64) -> Vec<u8> {
    let mut out = format!("stream {stream} record {seq} ").into_bytes();
    out.resize(64 + (seq % 7) as usize * 100, (seq % 251) as u8);
    out
}

/// The child: runs until killed.
#[test]
#[ignore = "run as a child process by process_crash_keeps_every_durable_record"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let wal = Arc::new(Wal::open_dir(config(Path::new(&dir))).expect("child: open"));
    let out = Arc::new(Mutex::new(std::io::LineWriter::new(std::io::stdout())));
    let threads: Vec<_> = (1..=WRITERS)
        .map(|stream| {
            let (wal, out) = (wal.clone(), out.clone());
            std::thread::spawn(move || {
                let existing = wal
                    .read_stream(StreamId(stream), 0, usize::MAX)
                    .expect("child: read");
                let mut acked_upto = existing.first().map(|(seq, _)| *seq).unwrap_or(0);
                let mut seq = existing.last().map(|(seq, _)| seq + 1).unwrap_or(0);
                loop {
                    let receipt = wal
                        .append(StreamId(stream), seq, &payload(stream, seq))
                        .expect("child: append");
                    let printer = out.clone();
                    wal.on_durable(
                        receipt.lsn,
                        Box::new(move |result| {
                            if result.is_ok() {
                                let _ = writeln!(printer.lock().unwrap(), "D {stream} {seq}");
                            }
                        }),
                    );
                    seq += 1;
                    while acked_upto + ACK_LAG < seq {
                        let _ = writeln!(out.lock().unwrap(), "I {stream} {acked_upto}");
                        if let Some(lsn) = wal
                            .delete(StreamId(stream), acked_upto)
                            .expect("child: delete")
                        {
                            let printer = out.clone();
                            let acked = acked_upto;
                            wal.on_durable(
                                lsn,
                                Box::new(move |result| {
                                    if result.is_ok() {
                                        let _ =
                                            writeln!(printer.lock().unwrap(), "A {stream} {acked}");
                                    }
                                }),
                            );
                        }
                        acked_upto += 1;
                    }
                    if seq % 512 == 0 {
                        // Keep the child from outrunning its durability reports by too much.
                        wal.wait_durable(receipt.lsn).expect("child: wait");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("child writer panicked");
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Reported {
    durable_max: Option<u64>,
    ack_issued_max: Option<u64>,
    acked_max: Option<u64>,
}

#[test]
fn process_crash_keeps_every_durable_record() {
    let iterations: usize = std::env::var("WARREN_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seconds: u64 = std::env::var("WARREN_CRASH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("process crash test: SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut reported: BTreeMap<u64, Reported> = BTreeMap::new();
    let mut total_durable = 0usize;

    for iteration in 0..iterations {
        if started.elapsed() > Duration::from_secs(seconds) {
            break;
        }
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => lines.push(line),
                    Err(_) => break, // the last line may be cut by the kill
                }
            }
            lines
        });
        // The random kill moment is the point of the test, not a synchronisation.
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            let mut parts = line.split(' ');
            let (Some(kind), Some(stream), Some(seq)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(stream), Ok(seq)) = (stream.parse::<u64>(), seq.parse::<u64>()) else {
                continue;
            };
            let entry = reported.entry(stream).or_default();
            match kind {
                "D" => {
                    entry.durable_max = entry.durable_max.max(Some(seq));
                    total_durable += 1;
                }
                "I" => entry.ack_issued_max = entry.ack_issued_max.max(Some(seq)),
                "A" => entry.acked_max = entry.acked_max.max(Some(seq)),
                _ => {}
            }
        }

        let wal = Wal::open_dir(config(dir.path()))
            .unwrap_or_else(|e| panic!("iteration {iteration} (SEED={seed}): reopen failed: {e}"));
        for stream in 1..=WRITERS {
            let live = wal.read_stream(StreamId(stream), 0, usize::MAX).unwrap();
            let seqs: Vec<u64> = live.iter().map(|(seq, _)| *seq).collect();
            let context = format!("iteration {iteration} (SEED={seed}) stream {stream}");
            if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
                assert_eq!(
                    seqs.len() as u64,
                    last - first + 1,
                    "{context}: gap in {first}..={last}"
                );
            }
            for (seq, record) in &live {
                assert_eq!(
                    record,
                    &payload(stream, *seq),
                    "{context}: record {seq} has wrong bytes"
                );
            }
            let r = reported.get(&stream).copied().unwrap_or_default();
            if let Some(durable) = r.durable_max {
                let must_exist_from = r.ack_issued_max.map_or(0, |a| a + 1);
                if durable >= must_exist_from {
                    assert!(
                        seqs.first().is_some_and(|f| *f <= must_exist_from)
                            && seqs.last().is_some_and(|l| *l >= durable),
                        "{context}: durable records {must_exist_from}..={durable} not all present (live {:?}..{:?})",
                        seqs.first(),
                        seqs.last()
                    );
                }
            }
            if let Some(acked) = r.acked_max {
                assert!(
                    seqs.first().is_none_or(|f| *f > acked),
                    "{context}: acked record {acked} came back"
                );
            }
        }
        drop(wal);
    }
    eprintln!(
        "process crash test: {total_durable} durability reports checked over {:?}",
        started.elapsed()
    );
    assert!(
        total_durable > 0,
        "the child never reported a durable record"
    );
}
