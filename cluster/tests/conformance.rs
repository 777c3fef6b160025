//! openraft's storage conformance suite against our log store on the shared write-ahead log
//! (and the group state machine around a small key-value state), plus what the suite does not
//! check: a restart keeps the vote, the entries, the purge point and the snapshot, and groups
//! sharing one log stay apart.

mod common;

use common::{open_wal, Kv};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use std::sync::Arc;
use warren_cluster::log_store::WalLogStore;
use warren_cluster::state_machine::GroupStateMachine;
use warren_cluster::types::{Command, Entry, GroupId, StorageError, TypeConfig, Vote};

struct Builder;

impl StoreBuilder<TypeConfig, WalLogStore, GroupStateMachine<Kv>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, WalLogStore, GroupStateMachine<Kv>), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = open_wal(dir.path());
        let group = GroupId(7);
        let log = WalLogStore::open(Arc::clone(&wal), group)?;
        let sm = GroupStateMachine::open(wal, group, Kv::default()).await?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}

fn entry(term: u64, index: u64, command: &str) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Command(command.as_bytes().to_vec().into())),
    }
}

async fn append(log: &mut WalLogStore, entries: Vec<Entry>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_vote_entries_purge_point_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let group = GroupId(3);
    {
        let wal = open_wal(dir.path());
        let mut log = WalLogStore::open(Arc::clone(&wal), group).unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        append(
            &mut log,
            (0..10)
                .map(|i| entry(4, i, &format!("k{i}=v{i}")))
                .collect(),
        )
        .await;
        log.truncate(log_id(4, 1, 8)).await.unwrap();
        log.purge(log_id(4, 1, 2)).await.unwrap();
        let mut sm = GroupStateMachine::open(Arc::clone(&wal), group, Kv::default())
            .await
            .unwrap();
        let entries = log.try_get_log_entries(3..6).await.unwrap();
        sm.apply(entries).await.unwrap();
        sm.build_snapshot().await.unwrap();
        log.save_committed(Some(log_id(4, 1, 5))).await.unwrap();
        // Make the unwaited records durable, as the next append would.
        wal.sync().unwrap();
    }
    let wal = open_wal(dir.path());
    let mut log = WalLogStore::open(Arc::clone(&wal), group).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(4, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(4, 1, 7)), "truncated at 8");
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, [3, 4, 5, 6, 7]);
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4, 1, 5)));
    let mut sm = GroupStateMachine::open(wal, group, Kv::default())
        .await
        .unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(4, 1, 5)));
    assert_eq!(sm.state().get("k4").as_deref(), Some("v4"));
    assert!(
        sm.state().get("k6").is_none(),
        "not applied before the snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_sharing_one_log_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    let mut a = WalLogStore::open(Arc::clone(&wal), GroupId(1)).unwrap();
    let mut b = WalLogStore::open(Arc::clone(&wal), GroupId(2)).unwrap();
    a.save_vote(&Vote::new(1, 1)).await.unwrap();
    b.save_vote(&Vote::new(9, 3)).await.unwrap();
    append(&mut a, (0..5).map(|i| entry(1, i, "a")).collect()).await;
    append(&mut b, (0..3).map(|i| entry(9, i, "b")).collect()).await;
    b.purge(log_id(9, 1, 1)).await.unwrap();
    assert_eq!(a.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    assert_eq!(a.try_get_log_entries(..).await.unwrap().len(), 5);
    assert_eq!(b.try_get_log_entries(..).await.unwrap().len(), 1);
    assert_eq!(a.get_log_state().await.unwrap().last_purged_log_id, None);
}
