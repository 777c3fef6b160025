//! Raft RPCs over tonic (`warren.raft.v1.Raft`): one HTTP/2 connection per peer node, shared by
//! every raft group on it; each request names its group. Payloads are openraft's requests and
//! results, bincode-encoded here.
//!
//! - [`Peers`]: the connections, opened lazily and reused.
//! - [`GroupNetwork`]: what openraft gets per group to reach the group's other members.
//! - [`Groups`] and [`RaftService`]: the server side, routing each request to its group.

use crate::codec::{decode, encode};
use crate::handover::{HoldRefused, Holds};
use crate::membership::{apply_voters, AddressBook, Outcome};
use crate::types::{Command, GroupId, NodeId, TypeConfig};
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use warren_proto::raft::raft_client::RaftClient;
use warren_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use warren_proto::raft::{
    AwaitAppliedReply, AwaitAppliedRequest, HoldReply, HoldRequest, MembershipReply,
    MembershipRequest, ProposeReply, ProposeRequest, RaftReply, RaftRequest,
};

/// How long connecting to a peer may take before the call counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Connections to peer nodes by address, shared by every group, and when each peer last
/// answered one of this node's raft calls.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    heard: Arc<Mutex<HashMap<NodeId, tokio::time::Instant>>>,
}

impl Peers {
    fn heard_from(&self, peer: NodeId) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard.insert(peer, tokio::time::Instant::now());
    }

    /// When `peer` last answered a raft call of this node (any group's: a leader hears from
    /// each follower every heartbeat).
    pub(crate) fn last_heard(&self, peer: NodeId) -> Option<tokio::time::Instant> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard.get(&peer).copied()
    }

    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// The network of one group: clients to the group's other members.
#[derive(Debug, Clone)]
pub struct GroupNetwork {
    group: GroupId,
    peers: Peers,
    /// This node's own view of its peers' addresses; they win over the addresses recorded in
    /// the group's membership (written by whichever node bootstrapped it), so each node's
    /// configuration decides how it reaches the others.
    addresses: AddressBook,
}

impl GroupNetwork {
    pub fn new(group: GroupId, peers: Peers) -> GroupNetwork {
        GroupNetwork {
            group,
            peers,
            addresses: AddressBook::default(),
        }
    }

    /// With this node's address book.
    pub fn with_addresses(mut self, addresses: AddressBook) -> GroupNetwork {
        self.addresses = addresses;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            addr: self
                .addresses
                .get(target)
                .unwrap_or_else(|| node.addr.clone()),
            peers: self.peers.clone(),
        }
    }
}

/// One group's client of one peer.
#[derive(Debug)]
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
    addr: String,
    peers: Peers,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type ClientError<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, ClientError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .peers
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel);
        let mut message = Request::new(RaftRequest {
            group: self.group.0,
            payload: encode(request),
        });
        message.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(message).await,
            Rpc::Vote => client.vote(message).await,
            Rpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        self.peers.heard_from(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, ClientError<openraft::error::Infallible>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, ClientError<InstallSnapshotError>> {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, ClientError<openraft::error::Infallible>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The raft groups this node serves, by id.
#[derive(Clone, Default)]
pub struct Groups {
    rafts: Arc<RwLock<HashMap<GroupId, Raft<TypeConfig>>>>,
    holds: Holds,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.rafts.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Groups").field("groups", &n).finish()
    }
}

impl Groups {
    pub fn insert(&self, group: GroupId, raft: Raft<TypeConfig>) {
        self.rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, raft);
    }

    pub fn remove(&self, group: GroupId) -> Option<Raft<TypeConfig>> {
        self.holds.forget(group);
        self.rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
    }

    /// Takes every group out (the node is stopping).
    pub fn drain(&self) -> Vec<(GroupId, Raft<TypeConfig>)> {
        self.rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect()
    }

    pub fn ids(&self) -> Vec<GroupId> {
        self.rafts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The groups whose leadership here holds still for a hand-over.
    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    pub fn get(&self, group: GroupId) -> Option<Raft<TypeConfig>> {
        self.rafts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }
}

/// The server side of the raft RPCs.
#[derive(Debug, Clone)]
pub struct RaftService {
    groups: Groups,
}

impl RaftService {
    pub fn new(groups: Groups) -> RaftServer<RaftService> {
        RaftServer::new(RaftService { groups })
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// This node's replica of `group`, or NOT_FOUND.
    fn group(&self, group: u64) -> Result<Raft<TypeConfig>, Status> {
        self.groups
            .get(GroupId(group))
            .ok_or_else(|| Status::not_found(format!("no raft group {group} on this node")))
    }

    fn target<T: DeserializeOwned>(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<(Raft<TypeConfig>, T), Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        let rpc = decode(&request.payload)
            .map_err(|e| Status::invalid_argument(format!("raft request: {e}")))?;
        Ok((raft, rpc))
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply {
        payload: encode(result),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (raft, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.target(request)?;
        reply(&raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (raft, rpc): (_, VoteRequest<NodeId>) = self.target(request)?;
        reply(&raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (raft, rpc): (_, InstallSnapshotRequest<TypeConfig>) = self.target(request)?;
        reply(&raft.install_snapshot(rpc).await)
    }

    async fn elect(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = request.into_inner().group;
        let raft = self.group(group)?;
        raft.trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftReply {
            payload: Vec::new(),
        }))
    }

    async fn await_applied(
        &self,
        request: Request<AwaitAppliedRequest>,
    ) -> Result<Response<AwaitAppliedReply>, Status> {
        let request = request.into_inner();
        let group = GroupId(request.group);
        let raft = self.group(group.0)?;
        let wait = Duration::from_millis(request.millis.min(60_000));
        let applied = raft
            .wait(Some(wait))
            .applied_index_at_least(Some(request.index), "applied for a proposer")
            .await
            .is_ok();
        Ok(Response::new(AwaitAppliedReply { applied }))
    }

    async fn hold(&self, request: Request<HoldRequest>) -> Result<Response<HoldReply>, Status> {
        let request = request.into_inner();
        let group = GroupId(request.group);
        let raft = self.group(group.0)?;
        let time = Duration::from_millis(request.millis.min(60_000));
        Ok(Response::new(
            match self
                .groups
                .holds()
                .hold(group, &raft, request.to, time)
                .await
            {
                Ok(()) => HoldReply {
                    held: true,
                    leader: 0,
                    refused: String::new(),
                },
                Err(refused) => HoldReply {
                    held: false,
                    leader: match refused {
                        HoldRefused::NotLeader(leader) => leader.unwrap_or(0),
                        HoldRefused::Behind(_) => 0,
                    },
                    refused: refused.to_string(),
                },
            },
        ))
    }

    async fn change_membership(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        let voters: BTreeSet<NodeId> = request.voters.into_iter().collect();
        let addresses: BTreeMap<NodeId, String> = request.addresses.into_iter().collect();
        match apply_voters(&raft, &voters, &addresses).await {
            Outcome::Done => Ok(Response::new(MembershipReply {
                applied: true,
                leader: 0,
            })),
            Outcome::NotLeader(leader) => Ok(Response::new(MembershipReply {
                applied: false,
                leader: leader.unwrap_or(0),
            })),
            Outcome::Failed(why) => Err(Status::unavailable(why)),
        }
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        let not_applied = |leader: Option<NodeId>| ProposeReply {
            applied: false,
            reply: Vec::new(),
            index: 0,
            leader: leader.unwrap_or(0),
        };
        let written = crate::node::write_while_leading(
            &raft,
            Command(request.command.into()),
            crate::node::FORWARD_TIMEOUT,
        )
        .await;
        let Some(written) = written else {
            let leader = raft.metrics().borrow().current_leader;
            return Ok(Response::new(not_applied(leader)));
        };
        match written {
            Ok(response) => Ok(Response::new(ProposeReply {
                applied: true,
                reply: response.data.0,
                index: response.log_id.index,
                leader: 0,
            })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Response::new(not_applied(f.leader_id)))
            }
            Err(RaftError::APIError(e)) => Err(Status::unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(e.to_string())),
        }
    }
}
