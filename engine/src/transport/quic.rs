//! The production transport: QUIC (quinn) with TLS 1.3 (rustls, ring provider).
//!
//! # Shape
//!
//! One UDP socket per node, bound to exactly `QuicConfig::listen`: the endpoint both accepts
//! and dials from it, so every packet a node sends leaves from its listen address (partition
//! tests match on source addresses).
//!
//! One connection per peer pair. The node with the lower id dials, the higher id accepts; with
//! one dialer per pair two nodes never race to build two connections. If a second connection
//! from the same peer is accepted anyway (the peer restarted and dialled again before this node
//! noticed the old connection die), the newer one wins and the older is closed.
//!
//! On a new connection each side opens one unidirectional stream and writes a [`Hello`] as its
//! first frame; that stream then carries the side's Raft batches, frames back to back, for the
//! life of the connection. The acceptor learns the dialer's id from its Hello; the dialer checks
//! that the acceptor is the node it meant to reach. Both check the cluster id.
//!
//! Requests go on bidirectional streams: `Request` frames out, `Response` frames back, paired
//! by id. A stream may carry one request or, pipelined, many (see [`super::pipeline`]); the
//! node serves both the same way (`serve_request`).
//!
//! # Clients
//!
//! A Hello with node id 0 ([`CLIENT_NODE_ID`]) comes from a client (see [`super::client`]),
//! never from a peer. The acceptor checks its cluster id (a mismatch closes the connection with
//! [`CLOSE_WRONG_CLUSTER`] and a reason naming this node's cluster), takes one of
//! `client_connections_max` slots (none free: closed with [`CLOSE_REFUSED`]), answers with its
//! own Hello and then only serves the client's request streams — at most
//! `client_request_streams_max` open per connection, at most `client_requests_inbound_max`
//! handlers node-wide (apart from the peers' budget, so clients cannot starve forwarding). A
//! client is not a peer: it is never in the peer map, never dialled, never sent batches, and
//! any frame it sends on its uni stream after the Hello closes the connection — a client cannot
//! inject Raft traffic. In certs mode the client must present a certificate signed by the
//! cluster CA (a node certificate will do), like any peer.
//!
//! # Tasks
//!
//! - per peer, a **writer** draining that peer's bounded outbound queue into the current
//!   connection's batch stream (batches are dropped while no connection exists);
//! - per peer with a higher id, a **dialer** that connects, waits for the connection to close,
//!   and reconnects with capped exponential backoff;
//! - one **acceptor** for incoming connections (at most `HANDSHAKES_CONCURRENT_MAX` in
//!   progress);
//! - per connection, a **batch reader** and a **request acceptor** (which spawns one task per
//!   inbound request, at most `requests_inbound_max` running handlers node-wide);
//! - per client connection, one **client server** (request acceptor and uni-stream watch);
//! - with test chaos on, per peer a [`chaos::Stage`] between `send` and the outbound queue.
//!
//! # Invariants
//!
//! - [`Transport::send`] never blocks and never awaits: it is a `try_send` into a bounded queue.
//! - Nothing read from the network is trusted: frames are bounded and checked (see
//!   [`super::frame`]); a bad frame closes its stream — and, on the batch stream, the connection,
//!   since the stream cannot be resynchronised — with a `tracing::warn!` and a count in
//!   `flotilla_transport_frame_errors_total`. No network input can panic the node.
//! - Every delivered batch has `from` = the peer named by the connection's Hello and `to` =
//!   this node; anything else is a protocol violation. (Mutual TLS proves the peer holds *a*
//!   cluster certificate, not *which* node it is: node certificates are not yet bound to ids.)
//! - No lock is held across an `.await`: the peer map is a `std::sync::Mutex` touched only by
//!   short synchronous sections.
//! - Every queue, every concurrency level and every wait is bounded by a named limit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::chaos::{self, ChaosConfig};
use super::frame::{self, Frame, FrameError, Hello, Request, Response};
use super::pipeline::Pipeline;
use super::tls::{self, TlsMode};
use super::{RaftBatch, RequestHandler, Transport, TransportError, CLIENT_NODE_ID};
use crate::raft::NodeId;

/// How often an idle connection sends a keep-alive, so NATs keep state and a dead peer is
/// noticed within the idle timeout.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
/// A connection with no traffic (keep-alives included) for this long is dead.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;
/// First reconnect delay after a failed dial; doubles per failure up to the maximum.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 50;
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 2_000;
/// TLS handshake plus the Hello exchange must finish within this.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Batches queued per peer before `send` starts dropping. One batch per peer per driver round,
/// so this is many rounds of slack.
pub const OUTBOUND_QUEUE_BATCHES_MAX: usize = 1_024;
/// Inbound request handlers running at once, node-wide.
pub const REQUESTS_INBOUND_MAX: usize = 256;
/// Request streams a peer may have open on one connection at once (QUIC stream credit).
pub const REQUEST_STREAMS_PER_CONNECTION_MAX: u32 = 128;
/// An inbound request stream's first frame must arrive within this once the stream is open.
pub const REQUEST_READ_TIMEOUT_MS: u64 = 30_000;
/// Answers (or pipelined requests) written to a stream in one go at most.
pub const PIPELINE_WRITE_BYTES_MAX: usize = 256 << 10;
/// Incoming connections between the first packet and the end of the Hello exchange.
pub const HANDSHAKES_CONCURRENT_MAX: usize = 64;
/// `shutdown` waits at most this long for tasks, and again for the endpoint, to finish.
pub const SHUTDOWN_DRAIN_MS: u64 = 2_000;
/// Longest cluster id accepted, in bytes (it travels in every Hello).
pub const CLUSTER_ID_BYTES_MAX: usize = 256;
/// Largest Hello payload read: a node id and a cluster id, with room to spare.
pub const HELLO_BYTES_MAX: usize = CLUSTER_ID_BYTES_MAX + 64;
/// Peers this node keeps state for (a queue and a writer task each). Connections that would
/// add a peer beyond this are refused.
pub const PEERS_MAX: usize = 4_096;

/// Client connections served at once, node-wide; more are refused with [`CLOSE_REFUSED`].
pub const CLIENT_CONNECTIONS_MAX: usize = 256;
/// Request streams one client may have open on its connection at once (QUIC stream credit):
/// a client multiplexes all its concurrent callers over one connection per node.
pub const CLIENT_REQUEST_STREAMS_MAX: u32 = 256;
/// Client request handlers running at once, node-wide, apart from the peers' budget.
pub const CLIENT_REQUESTS_INBOUND_MAX: usize = 1_024;
/// Longest close reason sent to a refused client, in bytes.
const CLOSE_REASON_BYTES_MAX: usize = 512;

/// Each side opens exactly one unidirectional stream per connection: its batch stream.
const UNI_STREAMS_PER_CONNECTION_MAX: u32 = 1;

// Application error codes on QUIC connection and stream closes.
const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(1);
const CLOSE_SUPERSEDED: VarInt = VarInt::from_u32(2);
const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(3);
const CLOSE_WRITE_FAILED: VarInt = VarInt::from_u32(4);
/// A client (or peer) named another cluster in its Hello; the reason names ours.
pub const CLOSE_WRONG_CLUSTER: VarInt = VarInt::from_u32(5);
/// A client was refused for capacity (too many client connections).
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(6);

/// Configuration of one node's QUIC transport. [`QuicConfig::new`] fills the tunables with the
/// defaults above; fields are public so tests and operators can tighten them.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    pub node_id: NodeId,
    /// Bound exactly; port 0 picks a free port (read it back with `local_addr`).
    pub listen: SocketAddr,
    /// Where to dial peers. Only peers with a higher id than `node_id` are dialled; entries for
    /// lower ids are allowed (they connect to us) and make `send` to them queue from the start.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub tls: TlsMode,
    /// Both ends of a connection must name the same cluster.
    pub cluster_id: String,
    pub keep_alive_interval: Duration,
    pub idle_timeout: Duration,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    pub handshake_timeout: Duration,
    pub outbound_queue_batches_max: usize,
    pub requests_inbound_max: usize,
    /// Client connections served at once (0 refuses every client).
    pub client_connections_max: usize,
    pub client_request_streams_max: u32,
    pub client_requests_inbound_max: usize,
    /// Test-only fault injection on outgoing batches; `None` in production. Set it only from
    /// [`ChaosConfig::from_env`].
    pub chaos: Option<ChaosConfig>,
}

impl QuicConfig {
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        cluster_id: impl Into<String>,
        tls: TlsMode,
    ) -> QuicConfig {
        QuicConfig {
            node_id,
            listen,
            peers: BTreeMap::new(),
            tls,
            cluster_id: cluster_id.into(),
            keep_alive_interval: Duration::from_millis(KEEP_ALIVE_INTERVAL_MS),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS),
            reconnect_backoff_min: Duration::from_millis(RECONNECT_BACKOFF_MIN_MS),
            reconnect_backoff_max: Duration::from_millis(RECONNECT_BACKOFF_MAX_MS),
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            outbound_queue_batches_max: OUTBOUND_QUEUE_BATCHES_MAX,
            requests_inbound_max: REQUESTS_INBOUND_MAX,
            client_connections_max: CLIENT_CONNECTIONS_MAX,
            client_request_streams_max: CLIENT_REQUEST_STREAMS_MAX,
            client_requests_inbound_max: CLIENT_REQUESTS_INBOUND_MAX,
            chaos: None,
        }
    }

    fn validate(&self) -> Result<(), TransportError> {
        let fail = |reason: String| Err(TransportError::Config(reason));
        if self.node_id == NodeId(0) {
            return fail("node id 0 is reserved".into());
        }
        if self.peers.contains_key(&self.node_id) || self.peers.contains_key(&NodeId(0)) {
            return fail(format!("peers must not include this node ({}) or node 0", self.node_id));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return fail(format!("cluster id must be 1..={CLUSTER_ID_BYTES_MAX} bytes"));
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return fail("keep-alive interval must be positive and below the idle timeout".into());
        }
        if self.reconnect_backoff_min.is_zero() || self.reconnect_backoff_min > self.reconnect_backoff_max {
            return fail("reconnect backoff must satisfy 0 < min <= max".into());
        }
        if self.handshake_timeout.is_zero()
            || self.outbound_queue_batches_max == 0
            || self.requests_inbound_max == 0
            || self.client_request_streams_max == 0
            || self.client_requests_inbound_max == 0
        {
            return fail(
                "handshake timeout, outbound queue and inbound request limits must be positive".into(),
            );
        }
        if let Some(chaos) = &self.chaos {
            chaos.validate().map_err(TransportError::Config)?;
        }
        Ok(())
    }
}

/// A node's QUIC transport. Dropping it stops it abruptly; [`shutdown`](Self::shutdown) first
/// for a clean close.
#[derive(Debug)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    cluster_id: String,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    reconnect_backoff_min: Duration,
    reconnect_backoff_max: Duration,
    handshake_timeout: Duration,
    outbound_queue_batches_max: usize,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    inbound: mpsc::Sender<RaftBatch>,
    handler: Arc<dyn RequestHandler>,
    request_permits: Arc<Semaphore>,
    handshake_permits: Arc<Semaphore>,
    client_connections_max: usize,
    client_request_streams_max: u32,
    /// Client connections being served; a slot is taken before the Hello is answered.
    clients_live: Arc<AtomicUsize>,
    client_request_permits: Arc<Semaphore>,
    chaos: Option<ChaosConfig>,
    next_request_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    tasks: Arc<Tasks>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

/// What this node knows about one peer.
struct Peer {
    /// Where to dial it; `None` for a lower-id peer that connected to us unannounced.
    addr: Option<SocketAddr>,
    outbound: mpsc::Sender<RaftBatch>,
    /// The current connection, if any. The writer and `request` read it; registration and
    /// connection teardown write it.
    link: watch::Sender<Option<Link>>,
    dialing: bool,
}

/// An established, Hello-checked connection and this side's batch stream on it.
#[derive(Clone)]
struct Link {
    connection: quinn::Connection,
    /// Only the peer's writer task writes; the mutex hands the stream from one link holder to
    /// the next without unsafe sharing, and is never contended in practice.
    batches: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    /// Requests to the peer, pipelined on one stream opened on first use.
    requests: Arc<tokio::sync::OnceCell<Pipeline>>,
}

impl QuicTransport {
    /// Binds `cfg.listen`, starts accepting, and starts dialling every peer with a higher id.
    /// Received batches go to `inbound` (bounded: when it is full, readers wait, and the QUIC
    /// flow control pushes back to the senders, whose queues then drop); requests go to
    /// `handler`. Must be called inside a tokio runtime.
    pub async fn start(
        cfg: QuicConfig,
        inbound: mpsc::Sender<RaftBatch>,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<QuicTransport, TransportError> {
        cfg.validate()?;
        let tls = tls::load(&cfg.tls)?;
        let transport = Arc::new(transport_config(
            cfg.keep_alive_interval,
            cfg.idle_timeout,
            REQUEST_STREAMS_PER_CONNECTION_MAX,
            UNI_STREAMS_PER_CONNECTION_MAX,
        )?);

        let server_crypto = QuicServerConfig::try_from(tls.server)
            .map_err(|e| TransportError::Config(format!("TLS server config unusable for QUIC: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(Arc::clone(&transport));
        // A peer is identified by where it speaks from; it must not move mid-connection.
        server_config.migration(false);
        let client_crypto = QuicClientConfig::try_from(tls.client)
            .map_err(|e| TransportError::Config(format!("TLS client config unusable for QUIC: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let endpoint = quinn::Endpoint::server(server_config, cfg.listen)
            .map_err(|source| TransportError::Bind { addr: cfg.listen, source })?;
        let local_addr =
            endpoint.local_addr().map_err(|source| TransportError::Bind { addr: cfg.listen, source })?;

        let inner = Arc::new(Inner {
            node_id: cfg.node_id,
            cluster_id: cfg.cluster_id,
            local_addr,
            endpoint,
            client_config,
            reconnect_backoff_min: cfg.reconnect_backoff_min,
            reconnect_backoff_max: cfg.reconnect_backoff_max,
            handshake_timeout: cfg.handshake_timeout,
            outbound_queue_batches_max: cfg.outbound_queue_batches_max,
            peers: Mutex::new(BTreeMap::new()),
            inbound,
            handler,
            request_permits: Arc::new(Semaphore::new(cfg.requests_inbound_max)),
            handshake_permits: Arc::new(Semaphore::new(HANDSHAKES_CONCURRENT_MAX)),
            client_connections_max: cfg.client_connections_max,
            client_request_streams_max: cfg.client_request_streams_max,
            clients_live: Arc::new(AtomicUsize::new(0)),
            client_request_permits: Arc::new(Semaphore::new(cfg.client_requests_inbound_max)),
            chaos: cfg.chaos,
            next_request_id: AtomicU64::new(1),
            shutdown: watch::Sender::new(false),
            tasks: Arc::new(Tasks::default()),
            runtime: tokio::runtime::Handle::current(),
        });
        tracing::info!(node = %inner.node_id, addr = %local_addr, "transport listening");
        if let Some(chaos) = &inner.chaos {
            tracing::warn!(node = %inner.node_id, chaos = %chaos, "TEST CHAOS ON: outgoing Raft batches are delayed, reordered, duplicated and dropped");
        }
        inner.spawn(accept_loop(Arc::clone(&inner)));
        for (peer, addr) in cfg.peers {
            inner.add_peer(peer, Some(addr));
        }
        Ok(QuicTransport { inner })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The address actually bound (with the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Adds a peer or changes its address; dials it if its id is higher than ours. The next
    /// reconnect uses the new address; a live connection is kept.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.inner.node_id || peer == NodeId(0) {
            tracing::warn!(node = %self.inner.node_id, peer = %peer, "ignoring invalid peer id");
            return;
        }
        self.inner.add_peer(peer, Some(addr));
    }

    /// Client connections being served right now.
    pub fn clients_connected(&self) -> usize {
        self.inner.clients_live.load(Ordering::Acquire)
    }

    /// Whether a Hello-checked connection to `peer` is up right now.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.inner.lock_peers().get(&peer).is_some_and(|p| p.link.borrow().is_some())
    }

    /// Stops dialling and accepting, closes every connection (peers see a close, not a
    /// timeout), and waits — bounded by `SHUTDOWN_DRAIN_MS` per phase — for the tasks and the
    /// endpoint to finish. The UDP socket is released once this value is dropped too.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        let drain = Duration::from_millis(SHUTDOWN_DRAIN_MS);
        if tokio::time::timeout(drain, self.inner.tasks.wait_idle()).await.is_err() {
            tracing::warn!(node = %self.inner.node_id, live = self.inner.tasks.live(), "transport tasks still running after shutdown drain");
        }
        let _ = tokio::time::timeout(drain, self.inner.endpoint.wait_idle()).await;
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
    }
}

impl Transport for QuicTransport {
    fn send(&self, batch: RaftBatch) {
        let inner = &self.inner;
        if batch.from != inner.node_id {
            // A host bug, not network input: refuse rather than let the receiver reject it.
            tracing::warn!(node = %inner.node_id, from = %batch.from, "batch with a foreign sender not sent");
            return;
        }
        let to = batch.to;
        let queued = match inner.lock_peers().get(&to) {
            Some(peer) => peer.outbound.try_send(batch).is_ok(),
            None => false,
        };
        if !queued {
            metrics::counter!("flotilla_transport_batches_dropped_total", "peer" => to.0.to_string())
                .increment(1);
        }
    }

    fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, TransportError>> + Send {
        let inner = Arc::clone(&self.inner);
        async move { inner.request(to, payload, timeout).await }
    }
}

impl Inner {
    fn lock_peers(&self) -> MutexGuard<'_, BTreeMap<NodeId, Peer>> {
        // The map is only mutated by short, non-panicking sections; a poisoned lock still holds
        // consistent data.
        self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(&self.runtime, task);
    }

    fn begin_shutdown(&self) {
        if self.shutdown.send_replace(true) {
            return;
        }
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
        for peer in self.lock_peers().values() {
            peer.link.send_replace(None);
        }
    }

    /// Resolves when shutdown begins (immediately if it has).
    async fn shut_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|down| *down).await;
    }

    /// Creates the peer's state (and writer) if needed, records `addr`, starts the dialer if we
    /// are the dialling side. Returns the peer's link channel.
    fn add_peer(self: &Arc<Self>, peer: NodeId, addr: Option<SocketAddr>) -> watch::Sender<Option<Link>> {
        let mut peers = self.lock_peers();
        let state = peers.entry(peer).or_insert_with(|| {
            let (outbound, queue) = mpsc::channel(self.outbound_queue_batches_max);
            let link = watch::Sender::new(None);
            self.spawn(write_batches(Arc::clone(self), peer, queue, link.subscribe()));
            let outbound = match &self.chaos {
                None => outbound,
                Some(cfg) => {
                    // `send` feeds the chaos stage, which feeds the real queue.
                    let (staged, stage_input) = mpsc::channel(self.outbound_queue_batches_max);
                    let stage = chaos::Stage::new(cfg, self.node_id, peer, self.outbound_queue_batches_max);
                    let inner = Arc::clone(self);
                    self.spawn(async move {
                        tokio::select! {
                            _ = stage.run(stage_input, outbound) => {}
                            _ = inner.shut_down() => {}
                        }
                    });
                    staged
                }
            };
            Peer { addr: None, outbound, link, dialing: false }
        });
        if addr.is_some() {
            state.addr = addr;
        }
        if peer > self.node_id && state.addr.is_some() && !state.dialing && !self.is_shut_down() {
            state.dialing = true;
            self.spawn(dial_loop(Arc::clone(self), peer));
        }
        state.link.clone()
    }

    /// Makes `connection` the current link to `peer` and starts its reader and request acceptor.
    fn register(
        self: &Arc<Self>,
        peer: NodeId,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        if self.is_shut_down() {
            connection.close(CLOSE_SHUTDOWN, b"shutdown");
            return;
        }
        let link = Link {
            connection: connection.clone(),
            batches: Arc::new(tokio::sync::Mutex::new(send)),
            requests: Arc::new(tokio::sync::OnceCell::new()),
        };
        let old = self.add_peer(peer, None).send_replace(Some(link));
        if let Some(old) = old {
            // "Keep the newer": the older connection belongs to a peer incarnation that is gone
            // or about to be.
            old.connection.close(CLOSE_SUPERSEDED, b"superseded by a newer connection");
        }
        metrics::counter!("flotilla_transport_connects_total", "peer" => peer.0.to_string()).increment(1);
        tracing::info!(node = %self.node_id, peer = %peer, addr = %connection.remote_address(), "connected");
        self.spawn(read_batches(Arc::clone(self), peer, connection.clone(), recv));
        self.spawn(accept_requests(Arc::clone(self), peer, connection));
    }

    /// Clears the peer's link if it still is `connection`.
    fn unregister(&self, peer: NodeId, connection: &quinn::Connection) {
        if let Some(state) = self.lock_peers().get(&peer) {
            state.link.send_if_modified(|link| {
                let current =
                    link.as_ref().is_some_and(|l| l.connection.stable_id() == connection.stable_id());
                if current {
                    *link = None;
                }
                current
            });
        }
    }

    fn hello(&self) -> Hello {
        Hello { node_id: self.node_id, cluster_id: self.cluster_id.clone() }
    }

    /// Checks a peer's Hello: same cluster, a valid id, and (when known) the id we expect.
    fn check_hello(&self, hello: &Hello, expected: Option<NodeId>) -> Result<(), String> {
        if hello.cluster_id != self.cluster_id {
            return Err(format!(
                "peer is in cluster {:?}, this node in {:?}",
                hello.cluster_id, self.cluster_id
            ));
        }
        match expected {
            Some(expected) if hello.node_id != expected => {
                Err(format!("dialled node {expected} but {} answered", hello.node_id))
            }
            Some(_) => Ok(()),
            // Only lower ids dial us.
            None if hello.node_id == NodeId(0) || hello.node_id >= self.node_id => {
                Err(format!("node {} may not dial node {} (the lower id dials)", hello.node_id, self.node_id))
            }
            None => {
                let peers = self.lock_peers();
                if peers.len() >= PEERS_MAX && !peers.contains_key(&hello.node_id) {
                    return Err(format!(
                        "already tracking {PEERS_MAX} peers; refusing node {}",
                        hello.node_id
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks a client's Hello and takes a client slot for it.
    fn check_client_hello(&self, hello: &Hello) -> Result<ClientSlot, HandshakeError> {
        if hello.cluster_id != self.cluster_id {
            return Err(HandshakeError::WrongCluster(format!(
                "node {} is in cluster {:?}, the client asked for {:?}",
                self.node_id, self.cluster_id, hello.cluster_id
            )));
        }
        let max = self.client_connections_max;
        self.clients_live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| (live < max).then_some(live + 1))
            .map_err(|_| {
                HandshakeError::Busy(format!("node {} serves at most {max} client connections", self.node_id))
            })?;
        Ok(ClientSlot(Arc::clone(&self.clients_live)))
    }

    /// Starts serving a client whose Hello was accepted and answered.
    fn serve_client(
        self: &Arc<Self>,
        connection: quinn::Connection,
        recv: quinn::RecvStream,
        slot: ClientSlot,
    ) {
        if self.is_shut_down() {
            connection.close(CLOSE_SHUTDOWN, b"shutdown");
            return;
        }
        // Clients multiplex many callers over one connection: more stream credit than a peer.
        connection.set_max_concurrent_bi_streams(VarInt::from_u32(self.client_request_streams_max));
        metrics::counter!("flotilla_transport_client_connects_total").increment(1);
        tracing::debug!(node = %self.node_id, addr = %connection.remote_address(), "client connected");
        let inner = Arc::clone(self);
        self.spawn(async move {
            let _slot = slot;
            serve_client(inner, connection, recv).await;
        });
    }

    async fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        if self.is_shut_down() {
            return Err(TransportError::ShutDown);
        }
        let deadline = Instant::now() + timeout;
        let mut link_rx = match self.lock_peers().get(&to) {
            Some(peer) => peer.link.subscribe(),
            None => return Err(TransportError::Unreachable { peer: to, reason: "unknown node".into() }),
        };
        // Waiting for a connection (one may be coming up) is bounded by the same deadline.
        let link = match tokio::time::timeout_at(deadline, link_rx.wait_for(Option::is_some)).await {
            Ok(Ok(link)) => link.clone(),
            Ok(Err(_)) => return Err(TransportError::ShutDown),
            Err(_) => {
                return Err(TransportError::Unreachable {
                    peer: to,
                    reason: format!("no connection within {timeout:?}"),
                })
            }
        };
        let Some(link) = link else {
            return Err(TransportError::Unreachable { peer: to, reason: "connection lost".into() });
        };
        let pipeline = link
            .requests
            .get_or_try_init(|| async {
                match tokio::time::timeout_at(deadline, link.connection.open_bi()).await {
                    Ok(Ok((send, recv))) => Ok(Pipeline::start(to, send, recv)),
                    _ => Err(()),
                }
            })
            .await;
        match pipeline {
            Ok(pipeline) if !pipeline.is_dead() => pipeline.request(payload, deadline, timeout).await,
            // No pipeline (or a broken one on a live connection): a stream for this request.
            _ => {
                let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
                exchange(to, &link.connection, Request { id, payload }, deadline, timeout).await
            }
        }
    }
}

/// One request/response on a fresh bidirectional stream, all of it before `deadline`
/// (`timeout` is only for the error message).
///
/// The error says whether the request can have run: until a stream is open nothing has been
/// sent ([`TransportError::Unreachable`] — a connection that is gone, or no stream credit in
/// time); from the first byte written, a failure is [`TransportError::Lost`] or
/// [`TransportError::Timeout`], and the request may have run.
pub(super) async fn exchange(
    peer: NodeId,
    connection: &quinn::Connection,
    request: Request,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, TransportError> {
    let bytes = frame::encode(&request)?;
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, connection.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return Err(TransportError::Unreachable { peer, reason: e.to_string() }),
        Err(_) => {
            return Err(TransportError::Unreachable {
                peer,
                reason: format!("no request stream free within {timeout:?}"),
            })
        }
    };
    let lost = |reason: String| TransportError::Lost { peer, reason };
    let answer = async {
        send.write_all(&bytes).await.map_err(|e| lost(e.to_string()))?;
        // Finishing only fails if the stream is already gone, which the read below reports.
        let _ = send.finish();
        match frame::read_frame(&mut recv).await {
            Ok(Some(Frame::Response(response))) if response.id == request.id => {
                response.result.map_err(|message| TransportError::Remote { peer, message })
            }
            Ok(Some(other)) => Err(TransportError::Protocol {
                peer,
                reason: format!(
                    "expected the response to request {}, got a {:?} frame",
                    request.id,
                    other.kind()
                ),
            }),
            Ok(None) => Err(lost("stream closed before the answer".into())),
            Err(FrameError::Io(reason)) => Err(lost(reason)),
            Err(e) => {
                count_frame_error(Some(peer));
                Err(TransportError::Protocol { peer, reason: e.to_string() })
            }
        }
    };
    tokio::time::timeout_at(deadline, answer).await.map_err(|_| TransportError::Timeout { peer, timeout })?
}

/// QUIC settings shared by nodes and clients: keep-alive, idle timeout, and how many streams
/// of each kind the peer may open.
pub(crate) fn transport_config(
    keep_alive: Duration,
    idle_timeout: Duration,
    bidi_streams: u32,
    uni_streams: u32,
) -> Result<quinn::TransportConfig, TransportError> {
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .map_err(|e| TransportError::Config(format!("idle timeout: {e}")))?;
    let mut transport = quinn::TransportConfig::default();
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(8)).max_ack_delay(Some(Duration::from_millis(2)));
    transport.ack_frequency_config(Some(acks));
    transport
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(uni_streams));
    Ok(transport)
}

/// Counts a malformed frame; `peer` is `None` before the Hello has named the sender.
pub(super) fn count_frame_error(peer: Option<NodeId>) {
    let label = match peer {
        None => "unknown".to_string(),
        Some(CLIENT_NODE_ID) => "client".to_string(),
        Some(p) => p.0.to_string(),
    };
    metrics::counter!("flotilla_transport_frame_errors_total", "peer" => label).increment(1);
}

/// Drains one peer's outbound queue into whatever connection is current.
async fn write_batches(
    inner: Arc<Inner>,
    peer: NodeId,
    mut queue: mpsc::Receiver<RaftBatch>,
    link: watch::Receiver<Option<Link>>,
) {
    let label = peer.0.to_string();
    loop {
        let batch = tokio::select! {
            batch = queue.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
            _ = inner.shut_down() => return,
        };
        let current = link.borrow().clone();
        let Some(current) = current else {
            // No connection: Raft retries, and stale batches are worse than none on reconnect.
            metrics::counter!("flotilla_transport_batches_dropped_total", "peer" => label.clone())
                .increment(1);
            continue;
        };
        let bytes = match frame::encode(&batch) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(node = %inner.node_id, peer = %peer, error = %e, "batch not sent");
                metrics::counter!("flotilla_transport_batches_dropped_total", "peer" => label.clone())
                    .increment(1);
                continue;
            }
        };
        let written = tokio::select! {
            written = async { current.batches.lock().await.write_all(&bytes).await } => written,
            _ = inner.shut_down() => return,
        };
        match written {
            Ok(()) => {
                metrics::counter!("flotilla_transport_batches_sent_total", "peer" => label.clone())
                    .increment(1);
                metrics::counter!("flotilla_transport_bytes_sent_total", "peer" => label.clone())
                    .increment(bytes.len() as u64);
            }
            Err(e) => {
                // The stream is unusable (peer stopped it, or the connection died); close the
                // connection so the dialer builds a fresh one with a fresh stream.
                tracing::debug!(node = %inner.node_id, peer = %peer, error = %e, "batch stream write failed");
                current.connection.close(CLOSE_WRITE_FAILED, b"batch stream write failed");
                inner.unregister(peer, &current.connection);
                metrics::counter!("flotilla_transport_batches_dropped_total", "peer" => label.clone())
                    .increment(1);
            }
        }
    }
}

/// Reads the peer's batch stream into the inbound channel until it ends or breaks.
async fn read_batches(
    inner: Arc<Inner>,
    peer: NodeId,
    connection: quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    let label = peer.0.to_string();
    loop {
        let frame = tokio::select! {
            frame = frame::read_frame(&mut recv) => frame,
            _ = inner.shut_down() => return,
        };
        let violation = match frame {
            Ok(Some(Frame::RaftBatch(batch))) => {
                if batch.from != peer || batch.to != inner.node_id {
                    format!("batch addressed {} -> {} on the connection from {peer}", batch.from, batch.to)
                } else {
                    metrics::counter!("flotilla_transport_batches_received_total", "peer" => label.clone())
                        .increment(1);
                    tokio::select! {
                        sent = inner.inbound.send(batch) => if sent.is_err() {
                            // The host dropped its receiver: it is shutting down.
                            return;
                        },
                        _ = inner.shut_down() => return,
                    }
                    continue;
                }
            }
            Ok(Some(other)) => format!("unexpected {:?} frame on the batch stream", other.kind()),
            Ok(None) => {
                tracing::debug!(node = %inner.node_id, peer = %peer, "peer finished its batch stream");
                return;
            }
            Err(e) if e.is_protocol_violation() => e.to_string(),
            Err(e) => {
                tracing::debug!(node = %inner.node_id, peer = %peer, error = %e, "batch stream ended");
                return;
            }
        };
        tracing::warn!(node = %inner.node_id, peer = %peer, reason = %violation, "bad frame on batch stream; closing the connection");
        count_frame_error(Some(peer));
        let _ = recv.stop(CLOSE_PROTOCOL);
        connection.close(CLOSE_PROTOCOL, b"bad frame on batch stream");
        inner.unregister(peer, &connection);
        return;
    }
}

/// Accepts request streams on one connection until it closes, then clears the link.
async fn accept_requests(inner: Arc<Inner>, peer: NodeId, connection: quinn::Connection) {
    loop {
        let streams = tokio::select! {
            streams = connection.accept_bi() => streams,
            _ = inner.shut_down() => break,
        };
        match streams {
            Ok((send, recv)) => {
                let permits = Arc::clone(&inner.request_permits);
                inner.spawn(serve_request(Arc::clone(&inner), peer, permits, send, recv));
            }
            Err(e) => {
                tracing::debug!(node = %inner.node_id, peer = %peer, error = %e, "connection closed");
                break;
            }
        }
    }
    inner.unregister(peer, &connection);
}

/// Serves one request stream: `Request` frames until the requester finishes its side, each
/// answered by a `Response` frame with its id, in the order the answers are ready. A requester
/// may send one request and finish (one stream per request), or keep one stream open and
/// pipeline many (see `super::pipeline`): one stream then carries a connection's requests, and
/// the answers ready together leave in one write — one packet for many, instead of a stream
/// opened, a packet sent and a stream closed per request.
///
/// Each request holds a permit from `permits` from its read until its answer is written, so
/// handlers running and answers queued stay bounded however fast a requester sends (it then
/// waits on QUIC flow control). When nobody can take the answers any more (the stream or the
/// connection is gone), the handlers still running are abandoned.
async fn serve_request(
    inner: Arc<Inner>,
    peer: NodeId,
    permits: Arc<Semaphore>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (answers, mut ready) = mpsc::unbounded_channel::<(Vec<u8>, OwnedSemaphorePermit)>();
    // Set by the reader on a bad frame: the stream is then reset rather than finished.
    let violated = std::sync::atomic::AtomicBool::new(false);
    let reader = {
        let inner = Arc::clone(&inner);
        let violated = &violated;
        async move {
            // The first request must come promptly; later ones whenever the requester likes.
            let mut read_timeout = Some(Duration::from_millis(REQUEST_READ_TIMEOUT_MS));
            loop {
                let next = async {
                    match read_timeout.take() {
                        Some(timeout) => tokio::time::timeout(timeout, frame::read_frame(&mut recv))
                            .await
                            .unwrap_or_else(|_| Err(FrameError::Io("no request in time".into()))),
                        None => frame::read_frame(&mut recv).await,
                    }
                };
                let request = tokio::select! {
                    frame = next => match frame {
                        Ok(Some(Frame::Request(request))) => request,
                        // The requester finished its side, went away, or never wrote.
                        Ok(None) | Err(FrameError::Io(_)) => return,
                        Ok(Some(other)) => {
                            tracing::warn!(node = %inner.node_id, peer = %peer, kind = ?other.kind(), "unexpected frame on a request stream");
                            count_frame_error(Some(peer));
                            let _ = recv.stop(CLOSE_PROTOCOL);
                            violated.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(node = %inner.node_id, peer = %peer, error = %e, "bad frame on a request stream; closing it");
                            count_frame_error(Some(peer));
                            let _ = recv.stop(CLOSE_PROTOCOL);
                            violated.store(true, Ordering::Relaxed);
                            return;
                        }
                    },
                    _ = answers.closed() => return,
                    _ = inner.shut_down() => return,
                };
                let permit = tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    _ = answers.closed() => return,
                    _ = inner.shut_down() => return,
                };
                let answers = answers.clone();
                let handler = Arc::clone(&inner);
                inner.spawn(async move {
                    let answer = tokio::select! {
                        answer = handler.handler.handle(peer, request.payload) => answer,
                        _ = answers.closed() => return,
                        _ = handler.shut_down() => return,
                    };
                    let bytes = frame::encode(&Response { id: request.id, result: Ok(answer) }).or_else(|e| {
                        tracing::warn!(node = %handler.node_id, peer = %peer, error = %e, "request answer not sendable");
                        frame::encode(&Response { id: request.id, result: Err(format!("answer not sendable: {e}")) })
                    });
                    if let Ok(bytes) = bytes {
                        let _ = answers.send((bytes, permit));
                    }
                });
            }
        }
    };
    let writer = async {
        let mut batch = Vec::new();
        let mut held = Vec::new();
        while let Some((bytes, permit)) = ready.recv().await {
            batch.clear();
            batch.extend_from_slice(&bytes);
            held.push(permit);
            while batch.len() < PIPELINE_WRITE_BYTES_MAX {
                match ready.try_recv() {
                    Ok((bytes, permit)) => {
                        batch.extend_from_slice(&bytes);
                        held.push(permit);
                    }
                    Err(_) => break,
                }
            }
            if send.write_all(&batch).await.is_err() {
                // Nobody takes answers any more: the reader and the handlers see the channel
                // close and stop.
                return;
            }
            held.clear();
        }
        // The reader is done and every handler has answered.
        if violated.load(Ordering::Relaxed) {
            let _ = send.reset(CLOSE_PROTOCOL);
        } else {
            let _ = send.finish();
        }
    };
    tokio::join!(reader, writer);
}

/// Accepts incoming connections for the life of the endpoint.
async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = inner.shut_down() => return,
        };
        let Ok(permit) = Arc::clone(&inner.handshake_permits).try_acquire_owned() else {
            tracing::warn!(node = %inner.node_id, addr = %incoming.remote_address(), "too many handshakes in progress; refusing a connection");
            incoming.refuse();
            continue;
        };
        let task_inner = Arc::clone(&inner);
        inner.spawn(async move {
            let remote = incoming.remote_address();
            let result = tokio::time::timeout(task_inner.handshake_timeout, accept_connection(&task_inner, incoming)).await;
            drop(permit);
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(node = %task_inner.node_id, addr = %remote, error = %e, "incoming connection refused"),
                Err(_) => tracing::warn!(node = %task_inner.node_id, addr = %remote, "incoming handshake timed out"),
            }
        });
    }
}

/// The acceptor's half of the handshake: TLS, then the dialer's Hello, then ours.
async fn accept_connection(inner: &Arc<Inner>, incoming: quinn::Incoming) -> Result<(), TransportError> {
    let remote = incoming.remote_address();
    let connection =
        incoming.await.map_err(|e| TransportError::Handshake { addr: remote, reason: e.to_string() })?;
    let outcome = async {
        let mut recv = connection.accept_uni().await.map_err(|e| FrameError::Io(e.to_string()))?;
        let hello = match frame::read_frame_max(&mut recv, HELLO_BYTES_MAX).await? {
            Some(Frame::Hello(hello)) => hello,
            Some(other) => return Err(format!("expected a Hello, got a {:?} frame", other.kind()).into()),
            None => return Err(HandshakeError::from("stream ended before the Hello".to_string())),
        };
        let slot = if hello.node_id == CLIENT_NODE_ID {
            Some(inner.check_client_hello(&hello)?)
        } else {
            inner.check_hello(&hello, None)?;
            None
        };
        let mut send = connection.open_uni().await.map_err(|e| FrameError::Io(e.to_string()))?;
        send.write_all(&frame::encode(&inner.hello())?).await.map_err(|e| FrameError::Io(e.to_string()))?;
        Ok::<_, HandshakeError>((hello.node_id, slot, send, recv))
    }
    .await;
    match outcome {
        Ok((_, Some(slot), mut send, recv)) => {
            // A client gets our Hello and nothing else on this stream.
            let _ = send.finish();
            inner.serve_client(connection, recv, slot);
            Ok(())
        }
        Ok((peer, None, send, recv)) => {
            inner.register(peer, connection, send, recv);
            Ok(())
        }
        Err(e) => {
            if e.is_malformed_frame() {
                count_frame_error(None);
            }
            let (code, reason) = match &e {
                HandshakeError::WrongCluster(reason) => (CLOSE_WRONG_CLUSTER, reason.as_str()),
                HandshakeError::Busy(reason) => (CLOSE_REFUSED, reason.as_str()),
                HandshakeError::Frame(_) | HandshakeError::Refused(_) => (CLOSE_PROTOCOL, "handshake failed"),
            };
            let reason = &reason.as_bytes()[..reason.len().min(CLOSE_REASON_BYTES_MAX)];
            connection.close(code, reason);
            Err(TransportError::Handshake { addr: remote, reason: e.to_string() })
        }
    }
}

/// Releases a client connection slot when the client's server task ends (or never starts).
#[derive(Debug)]
struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one client connection: its request streams, and a watch on its uni stream, on which
/// a client may send nothing after its Hello.
async fn serve_client(inner: Arc<Inner>, connection: quinn::Connection, mut recv: quinn::RecvStream) {
    let watch = async {
        match frame::read_frame_max(&mut recv, HELLO_BYTES_MAX).await {
            Ok(Some(other)) => Some(format!("a client sent a {:?} frame after its Hello", other.kind())),
            Err(e) if e.is_protocol_violation() => {
                Some(format!("a client sent a bad frame after its Hello: {e}"))
            }
            // A clean finish, or the connection going: nothing to object to.
            Ok(None) | Err(_) => None,
        }
    };
    tokio::pin!(watch);
    let mut watching = true;
    loop {
        tokio::select! {
            streams = connection.accept_bi() => match streams {
                Ok((send, recv)) => {
                    let permits = Arc::clone(&inner.client_request_permits);
                    inner.spawn(serve_request(Arc::clone(&inner), CLIENT_NODE_ID, permits, send, recv));
                }
                Err(e) => {
                    tracing::debug!(node = %inner.node_id, addr = %connection.remote_address(), error = %e, "client connection closed");
                    break;
                }
            },
            violation = &mut watch, if watching => {
                watching = false;
                if let Some(reason) = violation {
                    tracing::warn!(node = %inner.node_id, addr = %connection.remote_address(), reason = %reason, "closing a client connection");
                    count_frame_error(Some(CLIENT_NODE_ID));
                    connection.close(CLOSE_PROTOCOL, b"clients send requests only");
                    break;
                }
            }
            _ = inner.shut_down() => break,
        }
    }
}

/// The dialer's half of the handshake.
async fn dial(
    inner: &Arc<Inner>,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), TransportError> {
    let unreachable = |e: &dyn std::fmt::Display| TransportError::Unreachable { peer, reason: e.to_string() };
    // The server name is the address we dial: node certificates carry their IPs as SANs.
    let connection = inner
        .endpoint
        .connect_with(inner.client_config.clone(), addr, &addr.ip().to_string())
        .map_err(|e| unreachable(&e))?
        .await
        .map_err(|e| unreachable(&e))?;
    let outcome = async {
        let mut send = connection.open_uni().await.map_err(|e| FrameError::Io(e.to_string()))?;
        send.write_all(&frame::encode(&inner.hello())?).await.map_err(|e| FrameError::Io(e.to_string()))?;
        let mut recv = connection.accept_uni().await.map_err(|e| FrameError::Io(e.to_string()))?;
        match frame::read_frame_max(&mut recv, HELLO_BYTES_MAX).await? {
            Some(Frame::Hello(hello)) => inner.check_hello(&hello, Some(peer))?,
            Some(other) => return Err(format!("expected a Hello, got a {:?} frame", other.kind()).into()),
            None => return Err(HandshakeError::from("stream ended before the Hello".to_string())),
        }
        Ok::<_, HandshakeError>((send, recv))
    }
    .await;
    match outcome {
        Ok((send, recv)) => Ok((connection, send, recv)),
        Err(e) => {
            if e.is_malformed_frame() {
                count_frame_error(Some(peer));
            }
            connection.close(CLOSE_PROTOCOL, b"handshake failed");
            Err(TransportError::Protocol { peer, reason: e.to_string() })
        }
    }
}

/// Why a Hello exchange failed: the stream, a bad frame, or a Hello we refuse.
#[derive(Debug)]
enum HandshakeError {
    Frame(FrameError),
    Refused(String),
    /// A client of another cluster (the reason is sent back in the close).
    WrongCluster(String),
    /// A client refused for capacity (the reason is sent back in the close).
    Busy(String),
}

impl HandshakeError {
    /// Bad bytes (counted as frame errors), as opposed to a lost stream or a well-formed Hello
    /// we refuse (wrong cluster or id), which are logged but are not frame errors.
    fn is_malformed_frame(&self) -> bool {
        match self {
            HandshakeError::Frame(e) => e.is_protocol_violation(),
            HandshakeError::Refused(_) | HandshakeError::WrongCluster(_) | HandshakeError::Busy(_) => false,
        }
    }
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        HandshakeError::Frame(e)
    }
}

impl From<String> for HandshakeError {
    fn from(reason: String) -> Self {
        HandshakeError::Refused(reason)
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Frame(e) => e.fmt(f),
            HandshakeError::Refused(reason)
            | HandshakeError::WrongCluster(reason)
            | HandshakeError::Busy(reason) => f.write_str(reason),
        }
    }
}

/// Keeps one connection to a higher-id peer up: dial, hold, redial with capped backoff.
async fn dial_loop(inner: Arc<Inner>, peer: NodeId) {
    let mut backoff = inner.reconnect_backoff_min;
    let mut failures: u32 = 0;
    loop {
        if inner.is_shut_down() {
            return;
        }
        let addr = inner.lock_peers().get(&peer).and_then(|p| p.addr);
        let Some(addr) = addr else { return };
        let result = tokio::select! {
            result = tokio::time::timeout(inner.handshake_timeout, dial(&inner, peer, addr)) => result,
            _ = inner.shut_down() => return,
        };
        match result {
            Ok(Ok((connection, send, recv))) => {
                failures = 0;
                let connected_at = Instant::now();
                inner.register(peer, connection.clone(), send, recv);
                tokio::select! {
                    _ = connection.closed() => {}
                    _ = inner.shut_down() => return,
                }
                inner.unregister(peer, &connection);
                // A connection that lived a while resets the backoff; one that dies right after
                // the handshake (a flapping peer) keeps backing off.
                if connected_at.elapsed() >= inner.reconnect_backoff_max {
                    backoff = inner.reconnect_backoff_min;
                }
                tracing::info!(node = %inner.node_id, peer = %peer, "connection closed; reconnecting");
            }
            Ok(Err(e)) => {
                // Log the first failure of a streak loudly, the rest quietly.
                if failures == 0 {
                    tracing::warn!(node = %inner.node_id, peer = %peer, addr = %addr, error = %e, "dial failed; retrying with backoff");
                } else {
                    tracing::debug!(node = %inner.node_id, peer = %peer, addr = %addr, error = %e, failures, "dial failed");
                }
                failures = failures.saturating_add(1);
            }
            Err(_) => {
                if failures == 0 {
                    tracing::warn!(node = %inner.node_id, peer = %peer, addr = %addr, "dial timed out; retrying with backoff");
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = inner.shut_down() => return,
        }
        backoff = (backoff * 2).min(inner.reconnect_backoff_max);
    }
}

/// Counts the transport's live tasks so `shutdown` can wait for them (each holds endpoint and
/// connection handles; the socket is released only when all are gone).
#[derive(Debug, Default)]
struct Tasks {
    live: AtomicUsize,
    idle: Notify,
}

struct TaskGuard(Arc<Tasks>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    fn spawn<F>(self: &Arc<Self>, runtime: &tokio::runtime::Handle, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.live.fetch_add(1, Ordering::AcqRel);
        let guard = TaskGuard(Arc::clone(self));
        runtime.spawn(async move {
            let _guard = guard;
            task.await;
        });
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a notification between the check and the await
            // is not lost.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_problem() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let ok = QuicConfig::new(NodeId(1), addr, "c", TlsMode::Insecure);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.node_id = NodeId(0);
        assert!(matches!(bad.validate(), Err(TransportError::Config(_))));
        let mut bad = ok.clone();
        bad.peers.insert(NodeId(1), addr);
        assert!(matches!(bad.validate(), Err(TransportError::Config(_))));
        let mut bad = ok.clone();
        bad.cluster_id = String::new();
        assert!(matches!(bad.validate(), Err(TransportError::Config(_))));
        let mut bad = ok;
        bad.keep_alive_interval = bad.idle_timeout;
        assert!(matches!(bad.validate(), Err(TransportError::Config(_))));
    }

    #[test]
    fn hello_rules_the_lower_id_dials() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (tx, _rx) = mpsc::channel(1);
            let cfg =
                QuicConfig::new(NodeId(5), "127.0.0.1:0".parse().expect("addr"), "c", TlsMode::Insecure);
            let transport = QuicTransport::start(cfg, tx, super::super::handler_fn(|_, p| async move { p }))
                .await
                .expect("start");
            let inner = &transport.inner;
            let hello = |id, cluster: &str| Hello { node_id: NodeId(id), cluster_id: cluster.into() };
            assert!(inner.check_hello(&hello(3, "c"), None).is_ok());
            assert!(inner.check_hello(&hello(7, "c"), None).is_err(), "higher ids accept, never dial");
            assert!(inner.check_hello(&hello(0, "c"), None).is_err());
            assert!(inner.check_hello(&hello(3, "other"), None).is_err());
            assert!(inner.check_hello(&hello(7, "c"), Some(NodeId(7))).is_ok());
            assert!(inner.check_hello(&hello(8, "c"), Some(NodeId(7))).is_err());
            transport.shutdown().await;
        });
    }
}
