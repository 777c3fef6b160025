//! The message store of a quorum queue's leader: what the queue actor appends and removes
//! becomes raft entries of the queue's group. A message is read back from the entry that
//! enqueued it (the replicated state knows which), or, while its proposal is under way, from
//! the copy kept until it is applied: the queue may page new messages out of memory as a
//! classic queue does.
//!
//! Proposals go out in order through one task per leadership; what queued up while it was
//! busy goes out as one raft entry (a batch of commands). A confirm waits (`on_durable`)
//! until its entry is applied on the leader, which openraft does only after the entry is
//! committed: fsync'd on a majority of the replicas. Entries commit in log order, so a wait on
//! the last proposal of a batch covers the batch. Once any proposal fails (leadership lost),
//! every later wait answers `false`: the queue actor nacks, and publishers retry elsewhere.
//! A proposal counts as applied only if the applied entry carries this leadership's stamp;
//! when the router sees leadership move it abandons the store, failing whatever is still
//! waiting (openraft may never answer proposals a deposed leader made before a snapshot
//! replaced its log).

use super::state::{encode_batch, enqueued, lock, stamp_bytes, Loc, QuorumCommand, SharedData};
use crate::error::BrokerError;
use crate::message::StoredMessage;
use crate::queue::store::MessageStore;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use warren_cluster::types::{Command, GroupId};
use warren_storage::{Lsn, Wal};

type Done = Box<dyn FnOnce(bool) + Send>;

/// At most this many commands, and about this many bytes, go in one raft entry.
const BATCH_COMMANDS_MAX: usize = 512;
const BATCH_BYTES_MAX: usize = 1 << 20;

/// Raft entries proposed and not yet answered, at most. openraft 0.9's core appends each
/// proposal on its own and waits for its fsync before it looks at the next one, so entries
/// sent as fast as commands arrive cost an fsync each, one after the other (about 600
/// entries/s here, whatever their size). Holding the next entry back while this many are
/// under way lets everything that arrives meanwhile go out as one entry: the entries grow
/// with the load, and at low load a command still goes out at once.
const ENTRIES_IN_FLIGHT_MAX: usize = 4;

#[derive(Default)]
struct Progress {
    /// Every proposal up to this token was applied.
    applied: u64,
    /// The first token whose proposal failed.
    failed_at: Option<u64>,
    watchers: BTreeMap<u64, Vec<Done>>,
}

impl Progress {
    fn outcome(&self, token: u64) -> Option<bool> {
        if self.failed_at.is_some_and(|f| f <= token) {
            Some(false)
        } else if self.applied >= token {
            Some(true)
        } else {
            None
        }
    }

    /// The watchers whose outcome is now known, with it.
    fn settled(&mut self) -> Vec<(Done, bool)> {
        let mut out = Vec::new();
        let tokens: Vec<u64> = self.watchers.keys().copied().collect();
        for token in tokens {
            let Some(ok) = self.outcome(token) else {
                break;
            };
            for done in self.watchers.remove(&token).unwrap_or_default() {
                out.push((done, ok));
            }
        }
        out
    }
}

/// Records proposed and not yet applied, by seq, with their proposal's token.
type Pending = Arc<Mutex<BTreeMap<u64, (u64, Bytes)>>>;

fn pending(p: &Pending) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, Bytes)>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The leader's store of one quorum queue.
pub struct RaftStore {
    data: SharedData,
    /// The node's log, which holds the group's entries (stream = group id).
    wal: Arc<Wal>,
    group: GroupId,
    pending: Pending,
    /// When a majority last acknowledged this leader (as openraft reports it).
    quorum_acked_at: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// How long after that this leader is sure no other leader exists.
    lease: std::time::Duration,
    proposals: mpsc::UnboundedSender<(u64, QuorumCommand)>,
    next_token: AtomicU64,
    progress: Arc<Mutex<Progress>>,
    abandoned: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("next_token", &self.next_token)
            .finish()
    }
}

fn lock_acked(
    m: &Mutex<Option<tokio::time::Instant>>,
) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn progress(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl RaftStore {
    /// A store proposing to `raft` (this node leads it) over the group's `data`, that lets
    /// the queue deliver only within `lease` of a majority's last acknowledgement.
    ///
    /// The lease must end before another leader can be elected: followers refuse to vote for
    /// `election_timeout_max` after they last heard from this leader (openraft's leader lease),
    /// so any `lease` well below that is safe; the node uses the election timeout's minimum
    /// less a heartbeat.
    ///
    /// Proposals wait while `held` is true: the leadership holds still for a hand-over
    /// (`warren_cluster::handover`).
    pub fn new(
        raft: warren_cluster::types::GroupRaft,
        (wal, group): (Arc<Wal>, GroupId),
        data: SharedData,
        lease: std::time::Duration,
        mut held: tokio::sync::watch::Receiver<bool>,
    ) -> RaftStore {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, QuorumCommand)>();
        let (wait_tx, mut wait_rx) =
            mpsc::unbounded_channel::<(u64, u64, Result<_, _>, tokio::sync::OwnedSemaphorePermit)>(
            );
        let in_flight = Arc::new(tokio::sync::Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
        let progress_shared = Arc::new(Mutex::new(Progress::default()));
        // This leadership's random id, stamped on every proposal (by the proposer below).
        let leadership: u64 = rand::random();
        let (abandoned, mut abandoned_rx) = tokio::sync::watch::channel(false);
        let quorum_acked_at = Arc::new(Mutex::new(None));
        // Follows the age of the last majority acknowledgement, as reported: the report may
        // be read late, which only makes the lease look shorter.
        let (acked, mut metrics, mut abandoned_watch) = (
            Arc::clone(&quorum_acked_at),
            raft.data_metrics(),
            abandoned.subscribe(),
        );
        tokio::spawn(async move {
            loop {
                let at = metrics
                    .borrow_and_update()
                    .millis_since_quorum_ack
                    .map(|ms| tokio::time::Instant::now() - std::time::Duration::from_millis(ms));
                *lock_acked(&acked) = at;
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { break },
                    _ = abandoned_watch.changed() => break,
                }
            }
            *lock_acked(&acked) = None;
        });
        // Proposes in order...
        let stopped = abandoned.subscribe();
        tokio::spawn(async move {
            while let Some((first, command)) = rx.recv().await {
                // A hand-over in progress: nothing may renew the followers' lease of this
                // leader. (A dropped sender means the group stopped: go on and fail.)
                let _ = held.wait_for(|held| !held).await;
                let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                if *stopped.borrow() {
                    // Abandoned: nothing more of this leadership reaches the log.
                    return;
                }
                // What queued up meanwhile goes in the same entry.
                let mut parts = vec![((leadership, first), command)];
                let (mut last, mut bytes) = (first, 0usize);
                while parts.len() < BATCH_COMMANDS_MAX && bytes < BATCH_BYTES_MAX {
                    let Ok((token, command)) = rx.try_recv() else {
                        break;
                    };
                    bytes += command.encoded_len();
                    last = token;
                    parts.push(((leadership, token), command));
                }
                let entry = match parts.as_slice() {
                    [(stamp, command)] => command.encode(*stamp),
                    _ => encode_batch((leadership, last), &parts),
                };
                let receiver = raft.client_write_ff(Command(entry.into())).await;
                if wait_tx.send((first, last, receiver, slot)).is_err() {
                    return;
                }
            }
        });
        // ...and learns the outcomes in the same order.
        let p = Arc::clone(&progress_shared);
        let pending_shared = Pending::default();
        let proposed = Arc::clone(&pending_shared);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = wait_rx.recv() => next,
                    _ = abandoned_rx.changed() => None,
                };
                let Some((first, token, receiver, _slot)) = next else {
                    break;
                };
                let expected = stamp_bytes((leadership, token));
                let ok = match receiver {
                    Ok(receiver) => tokio::select! {
                        answer = receiver => {
                            matches!(answer, Ok(Ok(r)) if r.data.0 == expected)
                        }
                        _ = abandoned_rx.changed() => false,
                    },
                    Err(_) => false,
                };
                let settled = {
                    let mut progress = progress(&p);
                    if ok {
                        progress.applied = progress.applied.max(token);
                        // Applied: the state now says where in the log they are.
                        let mut proposed = pending(&proposed);
                        while let Some(first) = proposed.first_entry() {
                            if first.get().0 > token {
                                break;
                            }
                            first.remove();
                        }
                    } else if progress.failed_at.is_none() {
                        tracing::warn!(token, "quorum queue proposal failed: leadership lost");
                        progress.failed_at = Some(first);
                    }
                    progress.settled()
                };
                for (done, ok) in settled {
                    done(ok);
                }
            }
            // Abandoned, or the proposer is gone: whatever is still waited on will never be
            // known to be committed.
            let waiting = {
                let mut progress = progress(&p);
                progress.failed_at.get_or_insert(0);
                std::mem::take(&mut progress.watchers)
            };
            for done in waiting.into_values().flatten() {
                done(false);
            }
        });
        RaftStore {
            data,
            wal,
            group,
            pending: pending_shared,
            quorum_acked_at,
            lease,
            proposals: tx,
            next_token: AtomicU64::new(1),
            progress: progress_shared,
            abandoned,
        }
    }

    /// Claims the queue for this leadership (the first proposal): true once the claim is
    /// applied here, so everything committed before it is applied too, and no earlier
    /// leadership's proposal can change the queue any more.
    pub async fn claim(&self) -> bool {
        let Ok(lsn) = self.propose(QuorumCommand::Claim) else {
            return false;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_durable(
            lsn,
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        rx.await.unwrap_or(false)
    }

    /// Leadership moved: every proposal still waited on fails, and so does every later one.
    pub fn abandon(&self) {
        let _ = self.abandoned.send(true);
    }

    fn propose(&self, command: QuorumCommand) -> Result<Lsn, BrokerError> {
        if self.abandoned.borrow().to_owned() {
            return Err(BrokerError::Cluster(
                "this node no longer leads the queue".into(),
            ));
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.proposals
            .send((token, command))
            .map_err(|_| BrokerError::Cluster("the queue's raft group stopped".into()))?;
        Ok(Lsn(token))
    }
}

impl RaftStore {
    /// The messages entry `index` of the queue's log enqueued.
    fn read_entry(&self, index: u64) -> Result<Vec<(u64, Bytes)>, BrokerError> {
        let command = warren_cluster::log_store::read_command(&self.wal, self.group, index)
            .map_err(|e| BrokerError::Cluster(format!("reading entry {index}: {e}")))?
            .ok_or_else(|| {
                BrokerError::Cluster(format!("entry {index} of the queue's log is missing"))
            })?;
        enqueued(&command).map_err(|e| BrokerError::Cluster(format!("entry {index}: {e}")))
    }
}

impl MessageStore for RaftStore {
    fn append(&self, seq: u64, record: &StoredMessage) -> Result<Lsn, BrokerError> {
        // Every message of a quorum queue is replicated, persistent or not (as in RabbitMQ).
        let record = StoredMessage {
            transient: false,
            ..record.clone()
        }
        .encode()
        .freeze();
        // Kept until applied (the token is taken while the lock is held, so the tokens of
        // what is kept rise with the seqs).
        let mut kept = pending(&self.pending);
        let lsn = self.propose(QuorumCommand::Enqueue {
            seq,
            record: record.clone(),
        })?;
        kept.insert(seq, (lsn.0, record));
        Ok(lsn)
    }

    fn remove(&self, seqs: &[u64]) -> Result<(), BrokerError> {
        self.propose(QuorumCommand::Remove {
            seqs: seqs.to_vec(),
        })
        .map(drop)
    }

    fn remove_from(&self, from: u64) -> Result<(), BrokerError> {
        self.propose(QuorumCommand::RemoveFrom { from }).map(drop)
    }

    fn returned(&self, seqs: &[u64]) -> Result<(), BrokerError> {
        self.propose(QuorumCommand::Returned {
            seqs: seqs.to_vec(),
        })
        .map(drop)
    }

    fn delivery_count(&self, seq: u64) -> u32 {
        lock(&self.data).returns.get(&seq).copied().unwrap_or(0)
    }

    fn read_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredMessage)>, BrokerError> {
        // Proposed ones first: one applied meanwhile is in the state by the time it leaves
        // `pending`, so it is found in one or the other.
        let mut records: BTreeMap<u64, Bytes> = pending(&self.pending)
            .range(from..)
            .take(limit)
            .map(|(seq, (_, record))| (*seq, record.clone()))
            .collect();
        let stored: Vec<(u64, Loc)> = lock(&self.data)
            .messages
            .range(from..)
            .take(limit)
            .map(|(seq, loc)| (*seq, *loc))
            .collect();
        let mut seqs: Vec<u64> = records.keys().copied().collect();
        seqs.extend(stored.iter().map(|(seq, _)| *seq));
        seqs.sort_unstable();
        seqs.dedup();
        seqs.truncate(limit);
        let Some(&last) = seqs.last() else {
            return Ok(Vec::new());
        };
        // The rest from the log, each entry read once for all the messages it holds.
        let mut wanted: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (seq, loc) in stored {
            if seq <= last && !records.contains_key(&seq) {
                wanted.entry(loc.index).or_default().push(seq);
            }
        }
        for (index, seqs) in wanted {
            let found = self.read_entry(index)?;
            for seq in seqs {
                let record = found.iter().find(|(s, _)| *s == seq).ok_or_else(|| {
                    BrokerError::Cluster(format!(
                        "message {seq} is missing from entry {index} of the queue's log"
                    ))
                })?;
                records.insert(seq, record.1.clone());
            }
        }
        seqs.into_iter()
            .map(|seq| {
                let record = records.remove(&seq).expect("read above");
                StoredMessage::decode(record)
                    .map(|m| (seq, m))
                    .map_err(|source| BrokerError::BadRecord {
                        stream: self.group.0,
                        seq,
                        source,
                    })
            })
            .collect()
    }

    fn live(&self) -> (u64, u64) {
        let data = lock(&self.data);
        (data.messages.len() as u64, data.bound)
    }

    fn on_durable(&self, lsn: Lsn, done: Done) {
        let mut progress = progress(&self.progress);
        match progress.outcome(lsn.0) {
            Some(ok) => {
                drop(progress);
                done(ok);
            }
            None => progress.watchers.entry(lsn.0).or_default().push(done),
        }
    }

    fn keeps_transient(&self) -> bool {
        true
    }

    fn may_deliver(&self) -> bool {
        !*self.abandoned.borrow()
            && lock_acked(&self.quorum_acked_at).is_some_and(|at| at.elapsed() < self.lease)
    }
}
