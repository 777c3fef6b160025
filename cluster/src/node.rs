//! A cluster node: the raft groups it hosts on its shared write-ahead log, the connections to
//! its peers, and proposals that reach a group's leader wherever it is.
//!
//! - [`ClusterConfig`]: this node's id, every member's raft address, raft timings.
//! - [`Node::start_group`]: opens (or resumes) a group's log and state machine, registers it
//!   for the raft RPCs, and bootstraps its membership when this node is the group's designated
//!   bootstrapper and the group has never been initialized.
//! - [`Node::propose`]: a command to a group, applied by its leader: locally when this node
//!   leads, otherwise forwarded to the leader over the `Propose` RPC. Retries while the group
//!   has no leader, until a deadline.
//! - [`Node::wait_applied`]: waits until this node's replica applied a given entry, so that a
//!   client who saw a declaration confirmed on this node sees it here too.

use crate::log_store::WalLogStore;
use crate::membership::{apply_voters, AddressBook, Outcome};
use crate::network::{GroupNetwork, Groups, Peers};
use crate::state_machine::{GroupStateMachine, ReplicatedState};
use crate::types::{Command, GroupId, NodeId, TypeConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tonic::Request;
use warren_proto::raft::raft_client::RaftClient;
use warren_proto::raft::{AwaitAppliedRequest, MembershipRequest, ProposeRequest};
use warren_storage::Wal;

/// How long a proposal forwarded to the leader may take there.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a proposal given up by [`write_while_leading`] is retried.
pub(crate) const UNANSWERED: &str = "the leader gave up waiting for the entry";

/// `raft.client_write`, given up (`None`) after `wait`, or as soon as this node, leading the
/// group when the write began, no longer leads it. openraft 0.9 answers a write when its entry
/// is applied here or truncated from the log, but never when a snapshot from a newer leader
/// replaces it (a deposed leader far behind catches up so): its responder waits forever in the
/// core (fixed upstream after 0.9: openraft#1762). The entry may still be committed by the new
/// leader; proposals are retried, and state machines make a repeat harmless where it would
/// matter.
pub(crate) async fn write_while_leading(
    raft: &Raft<TypeConfig>,
    command: Command,
    wait: Duration,
) -> Option<
    Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    >,
> {
    let (me, leading) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        (m.id, m.current_leader == Some(m.id))
    };
    let give_up = async {
        if leading {
            let _ = raft
                .wait(Some(wait))
                .metrics(|m| m.current_leader != Some(me), "leadership ended")
                .await;
        } else {
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        biased;
        written = raft.client_write(command) => Some(written),
        () = give_up => None,
    }
}

/// The cluster section of a node's configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (unique in the cluster, 1 or more).
    pub node_id: NodeId,
    /// Every member: id → `host:port` of its raft (cluster) listener. Includes this node.
    pub members: BTreeMap<NodeId, String>,
    /// Leader heartbeat interval, in milliseconds. Idle groups cost a heartbeat each per
    /// interval per follower (500 idle groups × 3 members: ~10% of a core per node at 500 ms).
    pub heartbeat_ms: u64,
    /// A follower that heard no heartbeat for a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// This node joins a running cluster (an operator adds it with `warrenctl add-member`): it
    /// never initializes the metadata group itself, even when it has the lowest id listed.
    pub join: bool,
    /// A group snapshots once this many entries were applied past its last snapshot's cursor;
    /// a quarter of that (at most 1024) is kept before a snapshot's cursor for followers a
    /// little behind.
    pub snapshot_entries: u64,
    /// A member the metadata group's leader has not heard from for this long is down: its
    /// transient and exclusive classic queues are deleted cluster-wide (as RabbitMQ does when
    /// a node goes down); its durable ones wait for it.
    pub node_down_after_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            node_id: 1,
            members: BTreeMap::new(),
            heartbeat_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            join: false,
            snapshot_entries: crate::state_machine::SNAPSHOT_EVERY,
            node_down_after_ms: 15_000,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("cluster.node_id must be 1 or more".into());
        }
        if !self.members.contains_key(&self.node_id) {
            return Err(format!(
                "cluster.members must list this node (id {})",
                self.node_id
            ));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_ms {
            return Err("cluster: the election timeout must exceed the heartbeat interval".into());
        }
        if self.snapshot_entries < 4 {
            return Err("cluster.snapshot_entries must be 4 or more".into());
        }
        if self.node_down_after_ms <= self.election_timeout_max_ms {
            return Err("cluster.node_down_after_ms must exceed election_timeout_max_ms".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(
                "cluster.election_timeout_max_ms must exceed election_timeout_min_ms".into(),
            );
        }
        Ok(())
    }

    /// This node's raft address.
    pub fn own_address(&self) -> &str {
        self.members
            .get(&self.node_id)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Why a proposal did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no raft group {0:?} on this node")]
    NoGroup(GroupId),
    #[error("raft group {group:?} has no reachable leader after {waited:?}: {last}")]
    Unavailable {
        group: GroupId,
        waited: Duration,
        last: String,
    },
    #[error("raft group {0:?} stopped: {1}")]
    Stopped(GroupId, String),
}

/// A command applied by a group's leader.
#[derive(Debug, Clone)]
pub struct Proposed {
    /// The state machine's reply.
    pub reply: Vec<u8>,
    /// The entry's log index (wait for it with [`Node::wait_applied`]).
    pub index: u64,
}

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    config: Arc<ClusterConfig>,
    raft_config: Arc<openraft::Config>,
    wal: Arc<Wal>,
    peers: Peers,
    groups: Groups,
    addresses: AddressBook,
    /// What the groups' recent-entries caches hold together.
    recent: crate::log_store::RecentBudget,
    /// Members that did not confirm the last entry they were asked about (down, cut off or
    /// slow): asked again only briefly until they confirm one.
    behind: Arc<std::sync::Mutex<BTreeSet<NodeId>>>,
}

/// What one attempt at a proposal learned.
enum Attempt {
    Done(Proposed),
    /// Try again, preferably at this leader.
    Retry(Option<NodeId>, String),
}

impl Node {
    pub fn new(config: ClusterConfig, wal: Arc<Wal>) -> Result<Node, String> {
        config.validate()?;
        let raft_config = openraft::Config {
            cluster_name: "warren".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            // Snapshots replace the entries they cover; keep a margin for slow followers. The
            // state machine asks for them (`GroupStateMachine::with_snapshot_trigger`): a
            // queue's snapshot ends at its release cursor, not at the last applied entry.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: (config.snapshot_entries / 4).min(1024),
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        Ok(Node {
            addresses: AddressBook::new(config.members.clone()),
            config: Arc::new(config),
            raft_config: Arc::new(raft_config),
            wal,
            peers: Peers::default(),
            groups: Groups::default(),
            recent: Default::default(),
            behind: Default::default(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The members as openraft wants them.
    pub fn member_nodes(&self, ids: &[NodeId]) -> BTreeMap<NodeId, BasicNode> {
        ids.iter()
            .filter_map(|id| self.address(*id).map(|addr| (*id, BasicNode::new(addr))))
            .collect()
    }

    /// How this node reaches member `id`.
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.addresses.get(id)
    }

    pub fn address_book(&self) -> &AddressBook {
        &self.addresses
    }

    /// Opens (or resumes) a group with `state` and registers it. When the group has never been
    /// initialized and this node is its `bootstrapper`, it proposes the initial membership
    /// (`replicas`); the others wait to hear from the group's leader (a member added to a
    /// running group has no bootstrapper: the leader brings it in).
    pub async fn start_group<S: ReplicatedState>(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        bootstrapper: Option<NodeId>,
        state: S,
    ) -> Result<Raft<TypeConfig>, String> {
        let log = WalLogStore::open_within(Arc::clone(&self.wal), group, self.recent.clone())
            .map_err(|e| e.to_string())?;
        let (due_tx, mut due) = tokio::sync::mpsc::channel(1);
        let sm = GroupStateMachine::open(Arc::clone(&self.wal), group, state)
            .await
            .map_err(|e| e.to_string())?
            .with_snapshot_trigger(due_tx, self.config.snapshot_entries);
        let network =
            GroupNetwork::new(group, self.peers.clone()).with_addresses(self.addresses.clone());
        let raft = Raft::new(self.id(), Arc::clone(&self.raft_config), network, log, sm)
            .await
            .map_err(|e| e.to_string())?;
        self.groups.insert(group, raft.clone());
        // Ends when the group does (its state machine, which holds the sender, is dropped).
        let trigger = raft.clone();
        tokio::spawn(async move {
            while due.recv().await.is_some() {
                if let Err(error) = trigger.trigger().snapshot().await {
                    tracing::debug!(?group, %error, "snapshot not triggered");
                    break;
                }
            }
        });
        if bootstrapper == Some(self.id())
            && !raft.is_initialized().await.map_err(|e| e.to_string())?
        {
            let members = self.member_nodes(replicas);
            if let Err(error) = raft.initialize(members).await {
                // Another start raced us (harmless): the group is initialized either way.
                tracing::debug!(?group, %error, "initialize");
            }
        }
        Ok(raft)
    }

    /// Stops a group (its queue was deleted) and forgets it.
    pub async fn stop_group(&self, group: GroupId) {
        if let Some(raft) = self.groups.remove(group) {
            if let Err(error) = raft.shutdown().await {
                tracing::warn!(?group, ?error, "raft group shut down uncleanly");
            }
        }
    }

    /// Proposes `command` to `group` and returns the leader's reply once applied there.
    ///
    /// A proposal whose leader changed mid-flight may be applied and then retried: state
    /// machines make commands idempotent where a repeat would matter.
    pub async fn propose(
        &self,
        group: GroupId,
        command: Vec<u8>,
        deadline: Duration,
    ) -> Result<Proposed, ProposeError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut hint: Option<NodeId> = None;
        loop {
            let raft = self.groups.get(group).ok_or(ProposeError::NoGroup(group))?;
            let leader = hint.or_else(|| raft.metrics().borrow().current_leader);
            let last = match leader {
                Some(leader) if leader == self.id() => {
                    let wait = deadline.saturating_sub(started.elapsed());
                    match self
                        .propose_here(&raft, group, command.clone(), wait)
                        .await?
                    {
                        Attempt::Done(done) => return Ok(done),
                        Attempt::Retry(next, why) => {
                            hint = next.filter(|n| *n != self.id());
                            why
                        }
                    }
                }
                Some(leader) => match self.forward(group, leader, command.clone()).await {
                    Attempt::Done(done) => return Ok(done),
                    Attempt::Retry(next, why) => {
                        hint = next.filter(|n| *n != leader);
                        why
                    }
                },
                None => "no leader known".to_string(),
            };
            let waited = started.elapsed();
            if waited >= deadline {
                return Err(ProposeError::Unavailable {
                    group,
                    waited,
                    last,
                });
            }
            if hint.is_none() {
                // Wait for news of a leader (or the pause, whichever is first).
                let mut metrics = raft.metrics();
                let _ = tokio::time::timeout(pause, metrics.changed()).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }

    async fn propose_here(
        &self,
        raft: &Raft<TypeConfig>,
        group: GroupId,
        command: Vec<u8>,
        wait: Duration,
    ) -> Result<Attempt, ProposeError> {
        let Some(written) = write_while_leading(raft, Command(command.into()), wait).await else {
            return Ok(Attempt::Retry(None, UNANSWERED.into()));
        };
        match written {
            Ok(response) => Ok(Attempt::Done(Proposed {
                reply: response.data.0,
                index: response.log_id.index,
            })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Attempt::Retry(f.leader_id, "leadership moved".into()))
            }
            Err(RaftError::APIError(e)) => Ok(Attempt::Retry(None, e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Stopped(group, e.to_string())),
        }
    }

    /// Sends a proposal to the node believed to lead the group.
    async fn forward(&self, group: GroupId, leader: NodeId, command: Vec<u8>) -> Attempt {
        let Some(addr) = self.address(leader) else {
            return Attempt::Retry(None, format!("no address for leader {leader}"));
        };
        let channel = match self.peers.channel(&addr) {
            Ok(c) => c,
            Err(e) => return Attempt::Retry(None, e.to_string()),
        };
        let mut request = Request::new(ProposeRequest {
            group: group.0,
            command,
        });
        request.set_timeout(FORWARD_TIMEOUT);
        match RaftClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
            .propose(request)
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.applied {
                    Attempt::Done(Proposed {
                        reply: reply.reply,
                        index: reply.index,
                    })
                } else {
                    let next = (reply.leader != 0).then_some(reply.leader);
                    Attempt::Retry(next, format!("node {leader} does not lead the group"))
                }
            }
            Err(status) => Attempt::Retry(None, format!("node {leader}: {}", status.message())),
        }
    }

    /// When member `id` last answered a raft call of this node.
    pub fn last_heard(&self, id: NodeId) -> Option<tokio::time::Instant> {
        self.peers.last_heard(id)
    }

    /// The (shared, lazily connected) connection to member `id`, for other services on the
    /// cluster listener.
    pub fn channel_to(&self, id: NodeId) -> Result<tonic::transport::Channel, String> {
        let addr = self
            .address(id)
            .ok_or_else(|| format!("node {id} is not a member"))?;
        self.peers.channel(&addr).map_err(|e| e.to_string())
    }

    /// Waits until this node's replica of `group` applied entry `index`.
    pub async fn wait_applied(
        &self,
        group: GroupId,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        let raft = self.groups.get(group).ok_or(ProposeError::NoGroup(group))?;
        raft.wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied here")
            .await
            .map(|_| ())
            .map_err(|e| ProposeError::Unavailable {
                group,
                waited: timeout,
                last: e.to_string(),
            })
    }

    /// Waits, at most `wait`, until every other voter of `group` has applied entry `index`
    /// (each is asked at once; one that is down answers nothing). A voter that did not confirm
    /// the last entry it was asked about gets a twentieth of `wait`, so a member cut off costs
    /// each change a moment, not `wait`. Returns the voters that did not confirm it.
    pub async fn await_applied_everywhere(
        &self,
        group: GroupId,
        index: u64,
        wait: Duration,
    ) -> Vec<NodeId> {
        let Some(raft) = self.groups.get(group) else {
            return Vec::new();
        };
        let behind_before = self
            .behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut asked = tokio::task::JoinSet::new();
        for voter in crate::membership::voters(&raft) {
            if voter == self.id() {
                continue;
            }
            let wait = if behind_before.contains(&voter) {
                wait / 20
            } else {
                wait
            };
            let channel = self.channel_to(voter);
            asked.spawn(async move {
                let Ok(channel) = channel else {
                    return (voter, false);
                };
                let mut request = Request::new(AwaitAppliedRequest {
                    group: group.0,
                    index,
                    millis: wait.as_millis() as u64,
                });
                request.set_timeout(wait);
                let reply = RaftClient::new(channel).await_applied(request).await;
                (voter, reply.is_ok_and(|r| r.into_inner().applied))
            });
        }
        let mut behind = Vec::new();
        while let Some(answer) = asked.join_next().await {
            let Ok((voter, applied)) = answer else {
                continue;
            };
            let mut lagging = self.behind.lock().unwrap_or_else(|e| e.into_inner());
            if applied {
                lagging.remove(&voter);
            } else {
                lagging.insert(voter);
                behind.push(voter);
            }
        }
        behind
    }

    /// Makes `voters` the voters of `group`, at its leader (here or forwarded), within
    /// `deadline`: new members (reached at `addresses`) join as learners, catch up, then vote;
    /// members left out leave the group.
    pub async fn change_voters(
        &self,
        group: GroupId,
        voters: BTreeSet<NodeId>,
        addresses: BTreeMap<NodeId, String>,
        deadline: Duration,
    ) -> Result<(), String> {
        self.addresses
            .learn(addresses.iter().map(|(id, a)| (*id, a.as_str())));
        let until = tokio::time::Instant::now() + deadline;
        let mut hint: Option<NodeId> = None;
        let mut last;
        // Whom to ask when this node knows no leader (it may not be a member yet).
        let mut others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != self.id()).collect();
        let mut asked = 0usize;
        loop {
            // Without a replica here (none, or fenced), the other voters lead the way.
            let raft = self.groups.get(group);
            let leader = hint
                .take()
                .or_else(|| raft.as_ref()?.metrics().borrow().current_leader)
                .or_else(|| {
                    for v in raft.iter().flat_map(crate::membership::voters) {
                        if v != self.id() && !others.contains(&v) {
                            others.push(v);
                        }
                    }
                    asked += 1;
                    (!others.is_empty()).then(|| others[asked % others.len()])
                });
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let attempt = match (leader, &raft) {
                (Some(l), Some(raft)) if l == self.id() => {
                    tokio::time::timeout(left, apply_voters(raft, &voters, &addresses))
                        .await
                        .unwrap_or_else(|_| Outcome::Failed("timed out".into()))
                }
                (Some(l), None) if l == self.id() => Outcome::Failed("no such group here".into()),
                (Some(l), _) => {
                    self.forward_voters(group, l, &voters, &addresses, left)
                        .await
                }
                (None, _) => Outcome::Failed("no leader known".into()),
            };
            match attempt {
                Outcome::Done => {
                    // Answer once this node sees the change too (a node removing itself may
                    // never see the final membership: it waits a little, then answers).
                    let Some(raft) = raft else {
                        return Ok(());
                    };
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    let _ = raft
                        .wait(Some(left.min(Duration::from_secs(5))))
                        .metrics(
                            |m| {
                                m.membership_config
                                    .membership()
                                    .voter_ids()
                                    .collect::<BTreeSet<_>>()
                                    == voters
                            },
                            "the new voters seen here",
                        )
                        .await;
                    return Ok(());
                }
                Outcome::NotLeader(next) => {
                    hint = next;
                    last = "leadership moved".into();
                }
                Outcome::Failed(why) => last = why,
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "membership change not done within {deadline:?}: {last}"
                ));
            }
            if hint.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn forward_voters(
        &self,
        group: GroupId,
        leader: NodeId,
        voters: &BTreeSet<NodeId>,
        addresses: &BTreeMap<NodeId, String>,
        left: Duration,
    ) -> Outcome {
        let channel = match self.channel_to(leader) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e),
        };
        let mut request = Request::new(MembershipRequest {
            group: group.0,
            voters: voters.iter().copied().collect(),
            addresses: addresses.iter().map(|(k, v)| (*k, v.clone())).collect(),
        });
        request.set_timeout(left.max(Duration::from_millis(100)));
        match RaftClient::new(channel).change_membership(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.applied {
                    Outcome::Done
                } else {
                    Outcome::NotLeader((reply.leader != 0).then_some(reply.leader))
                }
            }
            Err(status) => Outcome::Failed(format!("node {leader}: {}", status.message())),
        }
    }

    /// The voters of `group` as this node knows them, with their addresses.
    pub fn group_members(&self, group: GroupId) -> BTreeMap<NodeId, String> {
        let Some(raft) = self.groups.get(group) else {
            return BTreeMap::new();
        };
        let recorded = crate::membership::nodes(&raft);
        crate::membership::voters(&raft)
            .into_iter()
            .map(|id| {
                let addr = self
                    .address(id)
                    .or_else(|| recorded.get(&id).cloned())
                    .unwrap_or_default();
                (id, addr)
            })
            .collect()
    }

    /// Keeps the address book up to date with the members of `group` (the metadata group,
    /// whose membership is the cluster's), as long as the group runs.
    pub fn follow_addresses(&self, group: GroupId) {
        let Some(raft) = self.groups.get(group) else {
            return;
        };
        let book = self.addresses.clone();
        let mut metrics = raft.server_metrics();
        tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    book.learn(
                        m.membership_config
                            .membership()
                            .nodes()
                            .map(|(id, n)| (*id, n.addr.as_str())),
                    );
                }
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Moves the leadership of `group` to member `to` and waits until this node sees it lead,
    /// up to `timeout` (see [`crate::handover`]): the current leader holds still, and `to` is
    /// asked to start an election every few heartbeats until it leads. Fails when `to` is not
    /// a voter of the group, or did not take over in time (the old leader then resumes).
    pub async fn transfer_leadership(
        &self,
        group: GroupId,
        to: NodeId,
        timeout: Duration,
    ) -> Result<(), String> {
        let raft = self.groups.get(group).ok_or("no such group here")?;
        if !crate::membership::voters(&raft).contains(&to) {
            return Err(format!("node {to} is not a voter of the group"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // Long enough for the followers' lease of the old leader to run out, with a margin.
        let hold = Duration::from_millis(2 * self.config.election_timeout_max_ms);
        let ask_every = Duration::from_millis((self.config.heartbeat_ms / 4).max(20));
        loop {
            let leader = raft.metrics().borrow().current_leader;
            if leader == Some(to) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(format!(
                    "node {to} did not become the leader within {timeout:?}"
                ));
            }
            let held = match leader {
                Some(leader) => self.hold_leader(group, leader, to, hold).await,
                None => false,
            };
            if !held {
                // No leader known, or it moved meanwhile: wait for news, then look again.
                let _ =
                    tokio::time::timeout(ask_every.min(deadline - now), raft.metrics().changed())
                        .await;
                continue;
            }
            let round_end = (tokio::time::Instant::now() + hold).min(deadline);
            while tokio::time::Instant::now() < round_end {
                if raft.metrics().borrow().current_leader == Some(to) {
                    return Ok(());
                }
                if let Err(why) = self.ask_to_elect(group, to).await {
                    tracing::debug!(?group, to, why, "asking for an election");
                }
                let _ = raft
                    .wait(Some(ask_every))
                    .metrics(|m| m.current_leader == Some(to), "the new leader")
                    .await;
            }
        }
    }

    /// Asks `leader` to hold its leadership of `group` still for `time`, for `to` to take
    /// over; true once it does and `to` has caught up.
    async fn hold_leader(
        &self,
        group: GroupId,
        leader: NodeId,
        to: NodeId,
        time: Duration,
    ) -> bool {
        if leader == self.id() {
            let Some(raft) = self.groups.get(group) else {
                return false;
            };
            return match self.groups.holds().hold(group, &raft, to, time).await {
                Ok(()) => true,
                Err(refused) => {
                    tracing::info!(?group, to, %refused, "hold refused");
                    false
                }
            };
        }
        let Ok(channel) = self.channel_to(leader) else {
            return false;
        };
        let mut request = Request::new(warren_proto::raft::HoldRequest {
            group: group.0,
            millis: time.as_millis() as u64,
            to,
        });
        request.set_timeout(time + Duration::from_secs(1));
        match RaftClient::new(channel).hold(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if !reply.held {
                    tracing::info!(?group, leader, to, refused = reply.refused, "hold refused");
                }
                reply.held
            }
            Err(status) => {
                tracing::debug!(?group, leader, %status, "hold");
                false
            }
        }
    }

    async fn ask_to_elect(&self, group: GroupId, to: NodeId) -> Result<(), String> {
        if to == self.id() {
            let raft = self.groups.get(group).ok_or("no such group here")?;
            return raft.trigger().elect().await.map_err(|e| e.to_string());
        }
        let mut request = Request::new(warren_proto::raft::RaftRequest {
            group: group.0,
            payload: Vec::new(),
        });
        request.set_timeout(Duration::from_secs(5));
        RaftClient::new(self.channel_to(to)?)
            .elect(request)
            .await
            .map(drop)
            .map_err(|s| format!("node {to}: {}", s.message()))
    }

    /// Whether this node currently leads `group`.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.leader(group) == Some(self.id())
    }

    /// The leader this node knows of for `group`.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.groups
            .get(group)
            .and_then(|raft| raft.metrics().borrow().current_leader)
    }

    /// Stops every group (the node is shutting down).
    pub async fn shutdown(&self) {
        for (group, raft) in self.groups.drain() {
            if let Err(error) = raft.shutdown().await {
                tracing::warn!(?group, ?error, "raft group shut down uncleanly");
            }
        }
    }
}
