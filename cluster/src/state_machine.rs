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
use bytes::Bytes;
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
    /// Applies the command of entry `index`; the reply goes back to whoever proposed it.
    fn apply(&mut self, index: u64, command: &Bytes) -> impl Future<Output = Vec<u8>> + Send;
    /// The state as it was once entry [`ReplicatedState::release_cursor`] was applied, encoded.
    fn snapshot(&self) -> Vec<u8>;
    /// The last entry a snapshot covers: `None` for the last one applied.
    ///
    /// A state that refers to entries of its log instead of holding what they carry (a quorum
    /// queue's messages stay in the log, and the state knows only where) describes itself as
    /// of an earlier entry: the one before the oldest entry it still refers to. The log is
    /// kept from there, and replaying it after the snapshot gives the state back.
    fn release_cursor(&self) -> Option<u64> {
        None
    }
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> impl Future<Output = Result<(), String>> + Send;
}

/// Entries applied past the last snapshot's cursor before the next snapshot is asked for (by
/// default).
pub const SNAPSHOT_EVERY: u64 = 4096;

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
    /// Membership changes applied since the last snapshot's cursor (and the one in force
    /// there): a snapshot at a cursor carries the membership of its cursor.
    memberships: Vec<StoredMembership>,
    /// Asks for a snapshot once the cursor moved this many entries past the last.
    snapshot_due: Option<(tokio::sync::mpsc::Sender<()>, u64)>,
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
            memberships: vec![membership.clone()],
            membership,
            current: stored,
            snapshots_built: 0,
            snapshot_due: None,
        })
    }

    /// Sends on `due` whenever a snapshot would release `every` more entries (the node then
    /// asks openraft for one; openraft's own policy counts from the last applied entry, which a
    /// state with a release cursor may not snapshot at).
    pub fn with_snapshot_trigger(mut self, due: tokio::sync::mpsc::Sender<()>, every: u64) -> Self {
        self.snapshot_due = Some((due, every));
        self
    }

    fn snapshot_index(&self) -> Option<u64> {
        self.current
            .as_ref()
            .and_then(|s| s.meta.last_log_id)
            .map(|l| l.index)
    }

    /// The index a snapshot taken now would end at.
    fn cursor_index(&self) -> Option<u64> {
        let applied = self.last_applied.map(|l| l.index);
        match self.state.release_cursor() {
            Some(cursor) if applied.is_some_and(|a| cursor < a) => Some(cursor),
            _ => applied,
        }
    }

    /// The log id at the cursor (read from the log when it is not the last applied entry).
    fn cursor_log_id(&self, index: Option<u64>) -> Result<Option<LogId>, StorageError> {
        let Some(index) = index else {
            return Ok(None);
        };
        if self.last_applied.is_some_and(|l| l.index == index) {
            return Ok(self.last_applied);
        }
        match crate::log_store::read_entry(&self.wal, self.group, index)? {
            Some(entry) => Ok(Some(entry.log_id)),
            None => Err(sm_error(RestoreError(format!(
                "entry {index} at the release cursor is missing from the log"
            )))),
        }
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
        let index = self.cursor_index();
        if let Some(current) = &self.current {
            if index <= self.snapshot_index() {
                // The cursor has not moved past the last snapshot: that one stands.
                return Ok(Snapshot {
                    meta: current.meta.clone(),
                    snapshot: Box::new(Cursor::new(current.data.clone())),
                });
            }
        }
        let last_log_id = self.cursor_log_id(index)?;
        self.snapshots_built += 1;
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshots_built),
            None => format!("none-{}", self.snapshots_built),
        };
        // The membership in force at the cursor; later changes stay in the log after it.
        let at = self
            .memberships
            .iter()
            .rposition(|m| *m.log_id() <= last_log_id)
            .unwrap_or(0);
        self.memberships.drain(..at);
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: self.memberships[0].clone(),
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

/// Snapshot building runs on the state machine itself (states are small next to their logs: a
/// queue's snapshot holds no messages, which stay in the log after its cursor).
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
                EntryPayload::Normal(command) => replies.push(Reply(
                    self.state.apply(entry.log_id.index, &command.0).await,
                )),
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.memberships.push(self.membership.clone());
                    replies.push(Reply::default());
                }
            }
        }
        if let Some((due, every)) = &self.snapshot_due {
            let released = self.cursor_index().map_or(0, |c| c + 1);
            if released >= self.snapshot_index().map_or(0, |s| s + 1) + every {
                // Full: one is asked for already.
                let _ = due.try_send(());
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
        tracing::info!(group = self.group.0, last_log_id = ?meta.last_log_id, "installing a snapshot from the leader");
        self.state
            .restore(&data)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &RestoreError(e)))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.memberships = vec![self.membership.clone()];
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
