//! Moving a group's leadership to a chosen member (openraft 0.9 has no leader transfer).
//!
//! A follower refuses to vote while it has heard from the current leader within the leader
//! lease (`election_timeout_max`), and every AppendEntries the leader sends — a heartbeat or
//! new entries — renews that lease. So the leader is first asked to *hold* still: it stops
//! heartbeating, stops starting elections, and stops proposing (its proposers wait on
//! [`Holds::watch`]). The chosen member is then asked to start an election, again and again,
//! until it leads: it wins as soon as the lease it holds for the old leader runs out, while the
//! other followers, whose election timers add the lease to a random election timeout, are
//! still waiting. The old leader, which neither heartbeats nor elects, steps down when the new
//! leader's first AppendEntries reaches it.
//!
//! A hold ends by itself when another leader is seen or its time is up (the asking node may
//! die halfway), so a leader never stays silent for good.

use crate::types::{GroupId, NodeId, TypeConfig};
use openraft::Raft;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Why a leader did not hold still.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRefused {
    /// This node does not lead the group; the leader it knows of.
    NotLeader(Option<NodeId>),
    /// The member to take over did not catch up with the leader's log in time.
    Behind(NodeId),
}

impl std::fmt::Display for HoldRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldRefused::NotLeader(Some(l)) => write!(f, "not the leader (node {l} is)"),
            HoldRefused::NotLeader(None) => write!(f, "not the leader (none known)"),
            HoldRefused::Behind(to) => write!(f, "node {to} did not catch up with the log"),
        }
    }
}

/// Which groups this node's leadership holds still, for the proposers to wait on.
#[derive(Debug, Clone, Default)]
pub struct Holds {
    groups: Arc<Mutex<HashMap<GroupId, HoldState>>>,
}

#[derive(Debug)]
struct HoldState {
    held: watch::Sender<bool>,
    /// Bumped by each hold, so only the latest one's expiry releases the group.
    generation: u64,
}

impl Default for HoldState {
    fn default() -> HoldState {
        HoldState {
            held: watch::channel(false).0,
            generation: 0,
        }
    }
}

impl Holds {
    /// `true` while this node's leadership of `group` holds still: proposals wait.
    pub fn watch(&self, group: GroupId) -> watch::Receiver<bool> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.entry(group).or_default().held.subscribe()
    }

    /// Makes this node, the leader of `raft`'s `group`, hold still for at most `time` (no
    /// heartbeats, no elections, no proposals) and returns once member `to` holds every entry
    /// this leader has: an election by a member whose log is behind would only depose this
    /// leader (its higher term does) without replacing it. Err with the leader this node knows
    /// of when it does not lead, or with a reason when `to` did not catch up within half the
    /// time (the hold is then released at once).
    pub async fn hold(
        &self,
        group: GroupId,
        raft: &Raft<TypeConfig>,
        to: NodeId,
        time: Duration,
    ) -> Result<(), HoldRefused> {
        let (me, leader) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (m.id, m.current_leader)
        };
        if leader != Some(me) {
            return Err(HoldRefused::NotLeader(leader));
        }
        let generation = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let state = groups.entry(group).or_default();
            state.generation += 1;
            state.held.send_replace(true);
            state.generation
        };
        raft.runtime_config().heartbeat(false);
        raft.runtime_config().elect(false);
        tracing::info!(
            ?group,
            ?time,
            to,
            "holding the leadership still for a hand-over"
        );
        let caught_up = raft
            .wait(Some(time / 2))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&to).cloned().flatten())
                        .map(|log_id| log_id.index);
                    m.current_leader != Some(me)
                        || (m.last_log_index.is_some() && matched >= m.last_log_index)
                },
                "the new leader's log caught up",
            )
            .await;
        let still_leading = caught_up
            .as_ref()
            .is_ok_and(|m| m.current_leader == Some(me));
        if !still_leading {
            self.release(group, generation, raft);
            return Err(match caught_up {
                Ok(m) => HoldRefused::NotLeader(m.current_leader),
                Err(_) => HoldRefused::Behind(to),
            });
        }
        let (holds, raft) = (self.clone(), raft.clone());
        tokio::spawn(async move {
            // Until another leader is seen, or the time is up.
            let _ = raft
                .wait(Some(time))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != me),
                    "another leader",
                )
                .await;
            holds.release(group, generation, &raft);
        });
        Ok(())
    }

    fn release(&self, group: GroupId, generation: u64, raft: &Raft<TypeConfig>) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = groups.get_mut(&group) else {
            return;
        };
        if state.generation != generation {
            return; // a later hold is in charge
        }
        raft.runtime_config().heartbeat(true);
        raft.runtime_config().elect(true);
        state.held.send_replace(false);
        tracing::info!(?group, leader = ?raft.metrics().borrow().current_leader, "hold released");
    }

    /// Forgets `group` (it stopped); anything still waiting on it proceeds.
    pub fn forget(&self, group: GroupId) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = groups.remove(&group) {
            state.held.send_replace(false);
        }
    }
}
