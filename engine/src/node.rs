//! One Flotilla node as a process runs it: storage, QUIC transport, the multi-Raft host, the
//! ticker, and the handler for requests forwarded by other nodes.
//!
//! Forwarding: any node accepts any key. A node that does not lead a key's range sends the
//! request to the node it believes leads it (`KvRequest` over a transport request); that node
//! executes it on its own replica only — never forwards again — and answers `NotLeader` with a
//! hint if it no longer leads, so a request crosses at most one hop per attempt and the caller
//! (the router) retries with the hint.
//!
//! Native clients (`flotilla_router::client::Client`, over the transport's client role) send
//! the same `KvRequest`s straight to the node they believe leads the range, and
//! `KvRequest::Describe` to learn the members, the ranges and the leaders this node knows of.
//! The handler treats them like forwarded requests: run on the local replica only, never
//! forwarded again.
//!
//! Test chaos: `Node::start` reads `FLOTILLA_TEST_CHAOS` (see `transport::chaos`); a bad spec
//! stops the node from starting, a good one turns on fault injection with a loud warning.

#![allow(clippy::disallowed_methods)] // a node owns threads and the clock

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::RangeId;
use crate::kv::{Command, CommandResult};
use crate::raft::NodeId;
use crate::storage::{NodeStorage, StorageError};
use crate::store::{self, BatchSender, KvError, ReadOp, ReadResult, StoreConfig, StoreHandle};
use crate::transport::{
    handler_fn, ChaosConfig, QuicConfig, QuicTransport, RaftBatch, TlsMode, Transport, TransportError,
};

/// A forwarded request gives up after this; a write's outcome is then unknown.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a forwarded request looks whether its target still leads the range as far as
/// this node knows (see `Node::forward`).
const FORWARD_RECHECK: Duration = Duration::from_millis(50);

/// A forwarded read whose target this node has seen lose the range is still given this long
/// to answer (this node's own view may be the stale one) before it is retried elsewhere.
const FORWARD_READ_GRACE: Duration = Duration::from_millis(300);

/// The same for a forwarded write, which is then answered "outcome unknown": longer, because a
/// leader that handed over its leadership answers its last writes only once it hears of their
/// commit from its successor — on a loaded node that can take a few hundred milliseconds, and a
/// write that happened should not be reported unknown for that.
const FORWARD_WRITE_GRACE: Duration = Duration::from_secs(1);

/// Capacity of the channel from the transport to the driver.
const INBOUND_BATCHES_MAX: usize = 4_096;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The initial cluster: every member's id and `--listen` address.
    pub members: Vec<(NodeId, SocketAddr)>,
    pub tls: TlsMode,
    pub cluster_id: String,
    pub initial_ranges: u32,
    pub store: StoreConfig,
    /// Run the Raft driver as a task on the caller's runtime — which must then be a
    /// current-thread runtime this node alone uses — instead of on a thread of its own: the
    /// network, client requests and the driver share one thread, and a message from a peer
    /// reaches the driver without waking another thread (`flotilla start --io-threads 0`).
    pub single_thread: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("configuration: {0}")]
    Config(String),
    // Transparent: the inner error says what it is, and an error chain ({:#}) would otherwise
    // print it twice (once in this message, once as its source).
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] KvError),
}

/// A request from another node (forwarded) or from a client. New variants go at the end: the
/// postcard encoding numbers variants by position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KvRequest {
    Propose {
        range: RangeId,
        command: Command,
    },
    Read {
        range: RangeId,
        op: ReadOp,
    },
    /// What this node knows of the cluster: answered with [`KvResponse::Describe`].
    Describe,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KvResponse {
    Command(Result<CommandResult, KvError>),
    Read(Result<ReadResult, KvError>),
    Describe(ClusterDescription),
}

/// The cluster as one node sees it: enough for a client to route every key to a leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDescription {
    /// The node that answered.
    pub node: NodeId,
    pub cluster_id: String,
    /// Every member and its `--listen` address (where clients connect too).
    pub members: Vec<MemberInfo>,
    /// Every range this node hosts, ordered by start key.
    pub ranges: Vec<RangeInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeInfo {
    pub id: RangeId,
    /// Inclusive start key.
    pub start: Vec<u8>,
    /// Exclusive end key; empty means the end of the keyspace.
    pub end: Vec<u8>,
    pub replicas: Vec<NodeId>,
    /// The leader as the answering node believes it, `None` when unknown or presumed dead.
    pub leader: Option<NodeId>,
}

impl RangeInfo {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// What `store` knows of the cluster, answered for `KvRequest::Describe`.
fn describe(
    node: NodeId,
    cluster_id: &str,
    members: &[(NodeId, SocketAddr)],
    store: &StoreHandle,
) -> ClusterDescription {
    let mut ranges: Vec<RangeInfo> = store
        .ranges()
        .iter()
        .map(|r| RangeInfo {
            id: r.id,
            start: r.start.clone(),
            end: r.end.clone(),
            replicas: r.replicas.clone(),
            // A leader on a node presumed dead is no leader worth sending requests to.
            leader: store.leader_of(r.id).filter(|&l| l == node || !store.peer_dead(l)),
        })
        .collect();
    ranges.sort_by(|a, b| a.start.cmp(&b.start));
    ClusterDescription {
        node,
        cluster_id: cluster_id.to_string(),
        members: members.iter().map(|&(id, addr)| MemberInfo { id, addr }).collect(),
        ranges,
    }
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub members: Vec<(NodeId, SocketAddr)>,
    pub store: StoreHandle,
    cluster_id: String,
    transport: Arc<QuicTransport>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the data directory, joins the transport, and starts the host. Must run inside a
    /// tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        if !cfg.members.iter().any(|&(id, addr)| id == cfg.id && addr == cfg.listen) {
            return Err(NodeError::Config(format!(
                "node {} at {} is not in the initial cluster {:?}; adding nodes to a running cluster \
                 needs the placement service, which is not built yet",
                cfg.id,
                cfg.listen,
                cfg.members.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>()
            )));
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            NodeError::Config(format!("cannot create data dir {}: {e}", cfg.data_dir.display()))
        })?;
        let path = cfg.data_dir.join("flotilla.redb");
        let storage = if cfg.store.lose_unsynced_writes {
            NodeStorage::open_writeback(&path)?
        } else {
            NodeStorage::open(&path)?
        };
        storage.claim(cfg.id, &cfg.cluster_id)?;

        let peers: Vec<(NodeId, SocketAddr)> =
            cfg.members.iter().copied().filter(|&(id, _)| id != cfg.id).collect();
        let (inbound_tx, mut inbound_rx) = mpsc::channel::<RaftBatch>(INBOUND_BATCHES_MAX);
        let store_slot: Arc<std::sync::OnceLock<StoreHandle>> = Arc::new(std::sync::OnceLock::new());
        let handler_store = store_slot.clone();
        let (me, cluster_id, members) = (cfg.id, cfg.cluster_id.clone(), Arc::new(cfg.members.clone()));
        // `from` is a peer's id, or `CLIENT_NODE_ID` for a client: both may ask anything here.
        let handler = handler_fn(move |_from: NodeId, payload: Vec<u8>| {
            let store = handler_store.get().cloned();
            let (cluster_id, members) = (cluster_id.clone(), Arc::clone(&members));
            async move {
                let response = match (store, postcard::from_bytes::<KvRequest>(&payload)) {
                    (None, _) => KvResponse::Command(Err(KvError::Unavailable("node is starting".into()))),
                    (Some(_), Err(e)) => {
                        KvResponse::Command(Err(KvError::Invalid(format!("bad request: {e}"))))
                    }
                    (Some(store), Ok(KvRequest::Propose { range, command })) => {
                        KvResponse::Command(store.propose(range, command).await)
                    }
                    (Some(store), Ok(KvRequest::Read { range, op })) => {
                        KvResponse::Read(store.read(range, op).await)
                    }
                    (Some(store), Ok(KvRequest::Describe)) => {
                        KvResponse::Describe(describe(me, &cluster_id, &members, &store))
                    }
                };
                postcard::to_stdvec(&response).unwrap_or_default()
            }
        });
        let mut quic = QuicConfig::new(cfg.id, cfg.listen, cfg.cluster_id.clone(), cfg.tls.clone());
        quic.peers = peers.iter().copied().collect();
        // A crashed peer's connection is noticed within the idle timeout; keep it close to the
        // node-liveness window so that a restarted peer is reachable again quickly.
        quic.keep_alive_interval = Duration::from_millis(300);
        quic.idle_timeout = Duration::from_millis(1_500);
        quic.chaos = ChaosConfig::from_env().map_err(NodeError::Config)?;
        if let Some(chaos) = &quic.chaos {
            // Loud on purpose: a node with chaos on must never be mistaken for a healthy one.
            eprintln!(
                "WARNING: node {}: TEST CHAOS ON ({}={chaos}): Raft batches to peers are delayed, \
                 reordered, duplicated and dropped. For fault-injection tests only.",
                cfg.id,
                crate::transport::chaos::CHAOS_ENV_VAR
            );
        }
        let transport = Arc::new(QuicTransport::start(quic, inbound_tx, handler).await?);

        let sender = transport.clone();
        let send: BatchSender = Arc::new(move |batch: RaftBatch| sender.send(batch));
        let member_ids: Vec<NodeId> = cfg.members.iter().map(|&(id, _)| id).collect();
        let bootstrap = store::initial_ranges(cfg.initial_ranges, &member_ids);
        let peer_ids = peers.iter().map(|&(id, _)| id).collect();
        let tick_interval = cfg.store.tick_interval;
        let handle = if cfg.single_thread {
            store::start_on_runtime(cfg.store.clone(), storage, &bootstrap, peer_ids, send)?
        } else {
            store::start(cfg.store.clone(), storage, &bootstrap, peer_ids, send)?.0
        };
        let _ = store_slot.set(handle.clone());

        let delivered = handle.clone();
        tokio::spawn(async move {
            while let Some(batch) = inbound_rx.recv().await {
                delivered.deliver(batch);
            }
        });
        let ticked = handle.clone();
        std::thread::Builder::new()
            .name(format!("flotilla-ticker-{}", cfg.id.0))
            .spawn(move || {
                // The driver counts ticks by the monotonic clock; this only wakes it up.
                while ticked.tick() {
                    std::thread::sleep(tick_interval / 2);
                }
            })
            .map_err(|e| NodeError::Config(format!("cannot start the ticker: {e}")))?;
        Ok(Node {
            id: cfg.id,
            listen: cfg.listen,
            members: cfg.members,
            store: handle,
            cluster_id: cfg.cluster_id,
            transport,
        })
    }

    /// What this node knows of the cluster (what `KvRequest::Describe` answers).
    pub fn describe(&self) -> ClusterDescription {
        describe(self.id, &self.cluster_id, &self.members, &self.store)
    }

    /// Client connections this node serves right now.
    pub fn clients_connected(&self) -> usize {
        self.transport.clients_connected()
    }

    /// Proposes `command` on `range` at `node` (this node or another, forwarded).
    pub async fn propose_at(
        &self,
        node: NodeId,
        range: RangeId,
        command: Command,
    ) -> Result<CommandResult, KvError> {
        if node == self.id {
            return self.store.propose(range, command).await;
        }
        match self.forward(node, KvRequest::Propose { range, command }).await? {
            KvResponse::Command(result) => result,
            KvResponse::Read(_) | KvResponse::Describe(_) => {
                Err(KvError::Unknown("mismatched response".into()))
            }
        }
    }

    /// Reads `op` on `range` at `node` (this node or another, forwarded).
    pub async fn read_at(&self, node: NodeId, range: RangeId, op: ReadOp) -> Result<ReadResult, KvError> {
        if node == self.id {
            return self.store.read(range, op).await;
        }
        match self.forward(node, KvRequest::Read { range, op }).await? {
            KvResponse::Read(result) => result,
            KvResponse::Command(_) | KvResponse::Describe(_) => {
                Err(KvError::Unavailable("mismatched response".into()))
            }
        }
    }

    /// Sends `request` to `node`, which this node believes leads the request's range, and
    /// waits for its answer — but not past the point where this node knows better: when `node`
    /// is presumed dead, or another node has led the range for `FORWARD_READ_GRACE` (a read) or
    /// `FORWARD_WRITE_GRACE` (a write) as far as this node sees, the answer may never come (a
    /// leader that hears nothing can neither answer nor learn it was deposed), so the wait ends
    /// there instead of at `FORWARD_TIMEOUT`. A read is then answered `NotLeader` with the new
    /// leader (the caller retries there: reads are safe to repeat); a write "outcome unknown".
    async fn forward(&self, node: NodeId, request: KvRequest) -> Result<KvResponse, KvError> {
        let (range, is_write) = match &request {
            KvRequest::Propose { range, .. } => (Some(*range), true),
            KvRequest::Read { range, .. } => (Some(*range), false),
            KvRequest::Describe => (None, false),
        };
        let payload = postcard::to_stdvec(&request).map_err(|e| KvError::Invalid(e.to_string()))?;
        if self.store.peer_dead(node) {
            return Err(KvError::Unavailable(format!("{node} is not responding")));
        }
        let answer = self.transport.request(node, payload, FORWARD_TIMEOUT);
        tokio::pin!(answer);
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + FORWARD_RECHECK, FORWARD_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let grace = if is_write { FORWARD_WRITE_GRACE } else { FORWARD_READ_GRACE };
        let mut deposed_since: Option<tokio::time::Instant> = None;
        let answer = loop {
            tokio::select! {
                // An answer that is there wins over a recheck due at the same time.
                biased;
                answer = &mut answer => break answer,
                _ = recheck.tick() => {
                    let leader = range.and_then(|r| self.store.leader_of(r));
                    let dead = self.store.peer_dead(node);
                    if !dead && leader.is_none_or(|l| l == node) {
                        deposed_since = None;
                        continue;
                    }
                    let since = *deposed_since.get_or_insert_with(tokio::time::Instant::now);
                    if !dead && since.elapsed() < grace {
                        continue;
                    }
                    metrics::counter!("flotilla_forwards_abandoned_total").increment(1);
                    let why = if dead {
                        format!("{node} stopped responding")
                    } else {
                        format!("{node} no longer leads the range")
                    };
                    return Err(match (is_write, range, leader.filter(|&l| l != node)) {
                        (true, _, _) => KvError::Unknown(format!("forwarded write to {node}: {why}")),
                        (false, Some(range), Some(other)) => {
                            KvError::NotLeader { range, leader_hint: Some(other) }
                        }
                        (false, _, _) => KvError::Unavailable(format!("read via {node}: {why}")),
                    });
                }
            }
        };
        match answer {
            Ok(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| KvError::Unknown(format!("bad response: {e}")))
            }
            Err(e @ TransportError::Unreachable { .. }) => {
                Err(KvError::Unavailable(format!("cannot reach {node}: {e}")))
            }
            // Anything else (a timeout, a lost stream: the request was sent) may have happened
            // after the leader got the write: its outcome is unknown, and "failed" could be a lie.
            Err(e) if is_write => Err(KvError::Unknown(format!("forwarded write to {node}: {e}"))),
            Err(e) => Err(KvError::Unavailable(format!("read via {node} failed: {e}"))),
        }
    }
}
