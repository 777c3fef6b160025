//! A group's state machine: openraft's bookkeeping (last applied log id, membership, the
//! current snapshot) around a [`ReplicatedState`] — the queue's `QueueState` for a quorum queue,
//! the definitions for the metadata group.
//!
//! Snapshots are the state's own encoding plus openraft's metadata, kept in the log's key-value
//! namespace (`raft \0 g \0 snapshot`), so a restarted node resumes from its last snapshot and
//! re-applies only the committed entries after it; acked entries never pin the log.

use crate::codec::{decode, encode};
use crate::types::{
    Entry, GroupId, LogId, Reply, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use warren_storage::Wal;

/// What a replicated group holds. `apply` must be deterministic: every replica applies the same
/// commands in the same order and must reach the same state.
///
/// `apply` and `restore` are asynchronous because a state may be the live broker's (the
/// metadata group applies a declaration to the node's exchanges and queues); they must not wait
/// on their own group.
pub trait ReplicatedState: Send + Sync + 'static {
    /// Applies one command; the reply goes back to whoever proposed it.
    fn apply(&mut self, command: &[u8]) -> impl Future<Output = Vec<u8>> + Send;
    /// The whole state, encoded.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine of one group.
pub struct GroupStateMachine<S: ReplicatedState> {
    wal: Arc<Wal>,
    group: GroupId,
    state: S,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    current: Option<StoredSnapshot>,
    snapshots_built: u64,
}

impl<S: ReplicatedState> std::fmt::Debug for GroupStateMachine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStateMachine")
            .field("group", &self.group)
            .field("last_applied", &self.last_applied)
            .finish()
    }
}

fn snapshot_key(group: GroupId) -> Vec<u8> {
    format!("raft\0{}\0snapshot", group.0).into_bytes()
}

fn sm_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RestoreError(String);

impl<S: ReplicatedState> GroupStateMachine<S> {
    /// A state machine over `state`, resumed from the group's stored snapshot if it has one.
    pub async fn open(wal: Arc<Wal>, group: GroupId, mut state: S) -> Result<Self, StorageError> {
        let stored: Option<StoredSnapshot> =
            match wal.kv_get(&snapshot_key(group)).map_err(sm_error)? {
                Some(bytes) => Some(decode(&bytes).map_err(sm_error)?),
                None => None,
            };
        let (last_applied, membership) = match &stored {
            Some(s) => {
                state
                    .restore(&s.data)
                    .await
                    .map_err(|e| sm_error(RestoreError(e)))?;
                (s.meta.last_log_id, s.meta.last_membership.clone())
            }
            None => (None, StoredMembership::default()),
        };
        Ok(GroupStateMachine {
            wal,
            group,
            state,
            last_applied,
            membership,
            current: stored,
            snapshots_built: 0,
        })
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    fn store_snapshot(&mut self, snapshot: StoredSnapshot) -> Result<(), StorageError> {
        let signature = Some(snapshot.meta.signature());
        self.wal
            .kv_put(&snapshot_key(self.group), &encode(&snapshot))
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        self.current = Some(snapshot);
        Ok(())
    }
}

impl<S: ReplicatedState> RaftSnapshotBuilder<TypeConfig> for GroupStateMachine<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.snapshots_built += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshots_built),
            None => format!("none-{}", self.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let data = self.state.snapshot();
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Snapshot building runs on the state machine itself (states are small next to their logs:
/// a queue's snapshot holds its ready and unacked messages).
impl<S: ReplicatedState> RaftStateMachine<TypeConfig> for GroupStateMachine<S> {
    type SnapshotBuilder = SnapshotHandle<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Reply::default()),
                EntryPayload::Normal(command) => {
                    replies.push(Reply(self.state.apply(&command.0).await))
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    replies.push(Reply::default());
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotHandle {
            snapshot: Some(self.build_snapshot().await),
            _state: std::marker::PhantomData,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.state
            .restore(&data)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &RestoreError(e)))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

/// A snapshot taken when openraft asked for a builder (the state is captured then, so building
/// needs no access to the live state machine).
pub struct SnapshotHandle<S> {
    snapshot: Option<Result<Snapshot<TypeConfig>, StorageError>>,
    _state: std::marker::PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for SnapshotHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotHandle")
    }
}

impl<S: ReplicatedState> RaftSnapshotBuilder<TypeConfig> for SnapshotHandle<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.snapshot
            .take()
            .unwrap_or_else(|| Err(sm_error(RestoreError("snapshot already built".into()))))
    }
}
