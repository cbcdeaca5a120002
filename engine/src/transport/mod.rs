//! Transport between nodes (DESIGN.md §3): the [`Transport`] seam and its two implementations.
//!
//! - [`quic::QuicTransport`]: production. QUIC via quinn, TLS 1.3 via rustls (mutual TLS with the
//!   cluster CA, or an insecure development mode), one connection per peer pair.
//! - [`mem::MemTransport`]: in-memory, through a [`mem::MemHub`] of channels with optional drops
//!   and partitions, for unit tests of the host.
//!
//! Both pass the same conformance tests (engine/tests/transport_quic.rs).
//!
//! Besides peer nodes, a node's QUIC endpoint serves **clients** ([`client`]): processes that
//! are not nodes (the benchmark harness, `flotilla kv`). A client's Hello carries
//! [`CLIENT_NODE_ID`] (node id 0); a client is never a Raft peer — it sends no batches, gets
//! none, is never dialled back — and its requests reach the same [`RequestHandler`] with
//! `from = CLIENT_NODE_ID`.
//!
//! [`chaos`] is a test-only fault injector for outgoing Raft batches (delay, reorder,
//! duplicate, drop), enabled only by the `FLOTILLA_TEST_CHAOS` environment variable.
//!
//! Layering, as in mini-redis: [`frame`] (bytes ↔ typed frames, bounded and checked) →
//! [`quic`] (connections, streams, reconnects) → the [`Transport`] trait the host sees. [`wire`]
//! holds what the host says ([`wire::RaftBatch`]); [`tls`] holds certificates and rustls configs.
//!
//! Two kinds of traffic:
//! - **Raft batches**, fire-and-forget: [`Transport::send`] never blocks the driver loop; the
//!   receiver gets them on the bounded `mpsc` channel given to the constructor.
//! - **Requests**, one question one answer: [`Transport::request`] with a timeout; the receiver
//!   answers through its [`RequestHandler`]. Used for things that are not Raft messages
//!   (forwarded client commands, snapshot chunks, liveness probes).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::NodeId;

pub mod chaos;
pub mod client;
pub mod frame;
pub mod mem;
pub mod pipeline;
pub mod quic;
pub mod tls;
pub mod wire;

pub use chaos::ChaosConfig;
pub use client::{ClientConnection, ClientEndpoint, ClientEndpointConfig};
pub use frame::FrameError;
pub use mem::{MemHub, MemTransport};
pub use quic::{QuicConfig, QuicTransport};
pub use tls::TlsMode;
pub use wire::RaftBatch;

/// The node id a client names in its Hello, and the `from` its requests carry. Node ids of real
/// nodes are positive, so this can never be mistaken for a peer.
pub const CLIENT_NODE_ID: NodeId = NodeId(0);

/// A boxed, sendable future; what [`RequestHandler::handle`] returns so the trait stays
/// object-safe (`Arc<dyn RequestHandler>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Moves Raft batches and requests between nodes.
///
/// # To ensure correctness
///
/// The host may rely on exactly this, and nothing more:
/// - A batch passed to [`send`](Transport::send) is delivered at most once. It may be dropped —
///   when the peer's outbound queue is full, while no connection to the peer exists, or when a
///   connection fails — and Raft's own retries (heartbeats, append probing, election timeouts)
///   recover from that. Batches are never duplicated.
/// - Batches from one node to another are never reordered while one connection lasts. Across a
///   reconnect (rare), a late batch read from the old connection may interleave with the first
///   batches of the new one, and any suffix of the old connection's batches may be lost. Raft
///   tolerates both; the host must not assume more order than that.
/// - A delivered batch has `from` = the sending node and `to` = the receiving node: the
///   transport checks both against the node ids exchanged when the connection was set up.
/// - [`request`](Transport::request) returns the handler's answer, or fails with
///   [`TransportError::Unreachable`] — nothing was sent (no connection, or no stream free,
///   within the timeout), so the request did **not** run — or with [`TransportError::Timeout`]
///   / [`TransportError::Lost`] (sent, then no answer in time / the stream or connection
///   failed), after which the request may or may not have run on the peer: such requests must
///   be idempotent, carry their own deduplication, or be reported as of unknown outcome.
/// - Nothing here persists anything; durability before sending is the host's job (STYLE.md 4).
///
/// **Test chaos.** With `QuicConfig::chaos` set (only ever from the `FLOTILLA_TEST_CHAOS`
/// environment variable, see [`chaos`]) the QUIC transport deliberately breaks the first two
/// promises: batches are delayed, reordered, duplicated and dropped. That is the point — Raft
/// tolerates all four, so the host must stay correct (safe, and live once the chaos stops)
/// under them; a host that breaks under chaos has a bug that real networks would find later.
///
/// `request` returns `impl Future + Send` rather than a boxed future: the host is generic over
/// its transport, so static dispatch costs nothing and saves an allocation per request. The
/// trait is therefore not object-safe; hosts take `T: Transport`.
pub trait Transport: Send + Sync + 'static {
    /// Queues `batch` for `batch.to`. Non-blocking: drops the batch if the queue is full.
    fn send(&self, batch: RaftBatch);

    /// Sends `payload` to `to`'s [`RequestHandler`] and waits at most `timeout` for the answer.
    fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// Answers requests from peers. `from` is the peer's node id as established by the
/// connection's Hello (in certs mode the peer is known to hold a cluster certificate).
pub trait RequestHandler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, payload: Vec<u8>) -> BoxFuture<'_, Vec<u8>>;
}

/// A [`RequestHandler`] made from an async closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnHandler")
    }
}

impl<F, Fut> RequestHandler for FnHandler<F>
where
    F: Fn(NodeId, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    fn handle(&self, from: NodeId, payload: Vec<u8>) -> BoxFuture<'_, Vec<u8>> {
        Box::pin((self.0)(from, payload))
    }
}

/// Wraps an async closure as a shareable [`RequestHandler`].
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn RequestHandler>
where
    F: Fn(NodeId, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Everything that can go wrong in the transport, from certificate files to requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection to the peer could be used; retry later or elsewhere.
    #[error("node {peer} unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    /// Connected, but no answer within the timeout; the request may or may not have run.
    #[error("request to node {peer} timed out after {timeout:?}")]
    Timeout { peer: NodeId, timeout: Duration },
    /// The request was sent, then its stream or connection failed before the answer: it may or
    /// may not have run on the peer.
    #[error("request to node {peer} lost: {reason}")]
    Lost { peer: NodeId, reason: String },
    /// The peer's transport could not produce an answer (for example, the answer was too big).
    #[error("node {peer} failed the request: {message}")]
    Remote { peer: NodeId, message: String },
    /// The peer broke the protocol (a bad frame, a wrong kind of frame, a mismatched id).
    #[error("protocol error with node {peer}: {reason}")]
    Protocol { peer: NodeId, reason: String },
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A connection attempt from or to `addr` failed before the Hello exchange completed
    /// (TLS refused, wrong cluster, a bad Hello).
    #[error("handshake with {addr} failed: {reason}")]
    Handshake { addr: std::net::SocketAddr, reason: String },
    /// The node at `addr` belongs to another cluster (its close reason says which).
    #[error("{addr} is in another cluster: {reason}")]
    WrongCluster { addr: std::net::SocketAddr, reason: String },
    /// The node at `addr` refused the connection (for example: too many clients).
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: std::net::SocketAddr, reason: String },
    #[error("{path} does not exist (create it with `flotilla cert create-ca` / `create-node`)")]
    MissingFile { path: PathBuf },
    #[error("{path} is not valid: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    #[error("{path} already exists; refusing to overwrite key material")]
    AlreadyExists { path: PathBuf },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate error: {0}")]
    Certificate(String),
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The transport was shut down.
    #[error("transport is shut down")]
    ShutDown,
}
