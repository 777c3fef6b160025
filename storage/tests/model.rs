//! The log against a simple in-memory model under random operations: append, delete, range
//! delete, definitions, sync, checkpoint, compaction, clean restart, and crashes (with and without
//! losing the index) on the simulated disk.
//!
//! Oracle: between crashes the log reads exactly as the model. After a crash it reads as the
//! model after some prefix of the operations that covers at least everything synced: nothing
//! synced is lost, nothing unsynced is invented, and nothing follows a gap.

mod common;

use std::collections::BTreeMap;

use common::{contents, small_config, Contents, SimLog};
use proptest::prelude::*;
use warren_storage::StreamId;

const STREAMS: [u64; 3] = [1, 2, 3];

#[derive(Clone, Debug)]
enum Op {
    Append { stream: u64, seq: u64, len: usize },
    Delete { stream: u64, seq: u64 },
    DeleteRange { stream: u64, from: u64, to: u64 },
    KvPut { key: u8, len: usize },
    KvDelete { key: u8 },
    Sync,
    Checkpoint,
    Compact,
    CompactAll,
    Restart,
    Crash,
    CrashLosingIndex,
}

fn op() -> impl Strategy<Value = Op> {
    let stream = prop::sample::select(STREAMS.to_vec());
    prop_oneof![
        12 => (stream.clone(), 0u64..24, 0usize..900).prop_map(|(stream, seq, len)| Op::Append { stream, seq, len }),
        5 => (stream.clone(), 0u64..24).prop_map(|(stream, seq)| Op::Delete { stream, seq }),
        1 => (stream, 0u64..24, 0u64..30).prop_map(|(stream, from, span)| Op::DeleteRange { stream, from, to: from + span }),
        2 => (0u8..6, 0usize..200).prop_map(|(key, len)| Op::KvPut { key, len }),
        1 => (0u8..6).prop_map(|key| Op::KvDelete { key }),
        2 => Just(Op::Sync),
        1 => Just(Op::Checkpoint),
        3 => Just(Op::Compact),
        1 => Just(Op::CompactAll),
        1 => Just(Op::Restart),
        2 => Just(Op::Crash),
        1 => Just(Op::CrashLosingIndex),
    ]
}

/// A change to the contents, as the model applies it.
#[derive(Clone, Debug)]
enum Mutation {
    Put(u64, u64, Vec<u8>),
    Delete(u64, u64),
    DeleteRange(u64, u64, u64),
    KvPut(Vec<u8>, Vec<u8>),
    KvDelete(Vec<u8>),
}

fn model_after(mutations: &[Mutation]) -> Contents {
    let mut model = Contents::default();
    for mutation in mutations {
        match mutation {
            Mutation::Put(stream, seq, payload) => {
                model.streams.insert((*stream, *seq), payload.clone());
            }
            Mutation::Delete(stream, seq) => {
                model.streams.remove(&(*stream, *seq));
            }
            Mutation::DeleteRange(stream, from, to) => {
                model
                    .streams
                    .retain(|(s, q), _| !(s == stream && from <= q && q < to));
            }
            Mutation::KvPut(key, value) => {
                model.kv.insert(key.clone(), value.clone());
            }
            Mutation::KvDelete(key) => {
                model.kv.remove(key);
            }
        }
    }
    model
}

fn bytes(tag: usize, len: usize) -> Vec<u8> {
    let mut out = format!("#{tag}#").into_bytes();
    out.resize(len.max(out.len()), (tag % 253) as u8);
    out
}

fn run(seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut log = SimLog::open(seed, small_config("/data"));
    let mut applied: Vec<Mutation> = Vec::new();
    let mut synced = 0usize;
    for (step, op) in ops.iter().enumerate() {
        let wal = log.wal();
        match op {
            Op::Append { stream, seq, len } => {
                let payload = bytes(step, *len);
                wal.append(StreamId(*stream), *seq, &payload).unwrap();
                applied.push(Mutation::Put(*stream, *seq, payload));
            }
            Op::Delete { stream, seq } => {
                wal.delete(StreamId(*stream), *seq).unwrap();
                applied.push(Mutation::Delete(*stream, *seq));
            }
            Op::DeleteRange { stream, from, to } => {
                wal.delete_range(StreamId(*stream), *from, *to).unwrap();
                applied.push(Mutation::DeleteRange(*stream, *from, *to));
            }
            Op::KvPut { key, len } => {
                let (key, value) = (vec![b'k', *key], bytes(step, *len));
                wal.kv_put(&key, &value).unwrap();
                applied.push(Mutation::KvPut(key, value));
            }
            Op::KvDelete { key } => {
                let key = vec![b'k', *key];
                wal.kv_delete(&key).unwrap();
                applied.push(Mutation::KvDelete(key));
            }
            Op::Sync => {
                wal.sync().unwrap();
                synced = applied.len();
            }
            Op::Checkpoint => wal.checkpoint().unwrap(),
            Op::Compact => {
                wal.compact().unwrap();
            }
            Op::CompactAll => {
                wal.compact_all().unwrap();
            }
            Op::Restart => {
                log.close();
                log.reopen();
                synced = applied.len();
            }
            Op::Crash | Op::CrashLosingIndex => {
                if matches!(op, Op::Crash) {
                    log.crash();
                } else {
                    log.crash_losing_index();
                }
                if let Err(error) = log.try_reopen() {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: reopen after a crash failed: {error}"
                    )));
                }
                let recovered = contents(log.wal(), &STREAMS);
                let survived = (synced..=applied.len())
                    .rev()
                    .find(|&k| model_after(&applied[..k]) == recovered);
                let Some(k) = survived else {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: recovered state is no prefix of {} mutations with {synced} synced:\n{recovered:?}\nmodel: {:?}",
                        applied.len(),
                        model_after(&applied)
                    )));
                };
                applied.truncate(k);
                synced = k;
            }
        }
        let expected = model_after(&applied);
        let actual = contents(log.wal(), &STREAMS);
        prop_assert_eq!(&actual, &expected, "step {}: {:?}", step, op);
        let live: BTreeMap<u64, u64> = STREAMS
            .iter()
            .map(|&s| (s, log.wal().stream_live(StreamId(s)).records))
            .collect();
        for (&stream, &records) in &live {
            let in_model = expected
                .streams
                .keys()
                .filter(|(s, _)| *s == stream)
                .count() as u64;
            prop_assert_eq!(
                records,
                in_model,
                "live count of stream {} after step {}",
                stream,
                step
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model_through_crashes(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..120)) {
        run(seed, &ops)?;
    }
}
