//! The client side of a node's QUIC endpoint: how a process that is not a node (the benchmark
//! harness, `flotilla kv`, any program using `flotilla_router::client::Client`) talks to nodes.
//!
//! Protocol (the same frames as between nodes, see [`super::frame`]):
//!
//! 1. QUIC + TLS 1.3 with ALPN `flotilla/1` to a node's `--listen` address. Insecure mode: the
//!    client verifies nothing and presents no certificate. Certs mode: the client verifies the
//!    node against the cluster CA and presents a certificate signed by it — a node certificate
//!    works (`flotilla cert create-node --name client ...` makes one for a client).
//! 2. The client opens one unidirectional stream, writes `Hello { node_id: 0, cluster_id }` and
//!    finishes the stream. The node answers on its own unidirectional stream with its Hello
//!    (its node id and cluster id), or closes the connection: application code
//!    [`CLOSE_WRONG_CLUSTER`] (the reason names the node's cluster) or [`CLOSE_REFUSED`] (too
//!    many clients).
//! 3. Requests go on one bidirectional stream per connection, pipelined: `Request` frames out,
//!    `Response` frames back in the order the answers are ready, paired by id (see
//!    [`super::pipeline`]). The payload is the node's request type (`node::KvRequest`). Many
//!    requests run at once on one connection. (A stream carrying a single request, then
//!    finished, is served the same way.)
//!
//! Invariants: every wait is bounded (handshake timeout, per-request deadline); an error says
//! whether the request can have run (see [`ClientConnection::request`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::VarInt;
use tokio::time::Instant;

use super::frame::{self, Frame, Hello};
use super::pipeline::Pipeline;
use super::quic::{self, CLOSE_REFUSED, CLOSE_WRONG_CLUSTER, CLUSTER_ID_BYTES_MAX, HELLO_BYTES_MAX};
use super::tls::{self, TlsMode};
use super::{TransportError, CLIENT_NODE_ID};
use crate::raft::NodeId;

/// A client's keep-alive; below any node's idle timeout, so an idle client stays connected.
pub const CLIENT_KEEP_ALIVE_INTERVAL_MS: u64 = 250;
/// The client's idle timeout (the connection uses the smaller of the client's and the node's).
pub const CLIENT_IDLE_TIMEOUT_MS: u64 = 10_000;
/// TLS handshake plus the Hello exchange must finish within this.
pub const CLIENT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// How a client endpoint authenticates and which cluster it expects.
#[derive(Clone, Debug)]
pub struct ClientEndpointConfig {
    /// `Insecure`, or `Certs { dir }` with `ca.pem`, `node.pem`, `node.key` (the client's
    /// certificate, signed by the cluster CA).
    pub tls: TlsMode,
    pub cluster_id: String,
    pub keep_alive_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl ClientEndpointConfig {
    pub fn new(tls: TlsMode, cluster_id: impl Into<String>) -> ClientEndpointConfig {
        ClientEndpointConfig {
            tls,
            cluster_id: cluster_id.into(),
            keep_alive_interval: Duration::from_millis(CLIENT_KEEP_ALIVE_INTERVAL_MS),
            idle_timeout: Duration::from_millis(CLIENT_IDLE_TIMEOUT_MS),
            handshake_timeout: Duration::from_millis(CLIENT_HANDSHAKE_TIMEOUT_MS),
        }
    }
}

/// Dials nodes as a client. Cheap to clone; one UDP socket per address family, made on first
/// use. Must be used inside a tokio runtime.
#[derive(Clone, Debug)]
pub struct ClientEndpoint {
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    config: quinn::ClientConfig,
    cluster_id: String,
    handshake_timeout: Duration,
    /// IPv4 and IPv6 sockets, bound lazily to the unspecified address.
    endpoints: Mutex<[Option<quinn::Endpoint>; 2]>,
}

impl std::fmt::Debug for EndpointInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEndpoint").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

/// The last handle gone (endpoint and connections alike): close the sockets.
impl Drop for EndpointInner {
    fn drop(&mut self) {
        let endpoints = self.endpoints.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for endpoint in endpoints.iter().flatten() {
            endpoint.close(VarInt::from_u32(0), b"client closed");
        }
    }
}

impl ClientEndpoint {
    /// Builds the TLS configuration (reading certificate files in certs mode).
    pub fn new(cfg: ClientEndpointConfig) -> Result<ClientEndpoint, TransportError> {
        if cfg.cluster_id.is_empty() || cfg.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(TransportError::Config(format!(
                "cluster id must be 1..={CLUSTER_ID_BYTES_MAX} bytes"
            )));
        }
        if cfg.keep_alive_interval.is_zero()
            || cfg.keep_alive_interval >= cfg.idle_timeout
            || cfg.handshake_timeout.is_zero()
        {
            return Err(TransportError::Config(
                "keep-alive must be positive and below the idle timeout; handshake timeout positive".into(),
            ));
        }
        let crypto = match &cfg.tls {
            TlsMode::Insecure => tls::insecure_client_config()?,
            TlsMode::Certs { dir } => tls::mutual_client_config(dir)?,
        };
        let crypto = QuicClientConfig::try_from(crypto)
            .map_err(|e| TransportError::Config(format!("TLS client config unusable for QUIC: {e}")))?;
        // The node opens exactly one stream to a client (its Hello) and no requests.
        let transport = quic::transport_config(cfg.keep_alive_interval, cfg.idle_timeout, 0, 1)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(ClientEndpoint {
            inner: Arc::new(EndpointInner {
                config,
                cluster_id: cfg.cluster_id,
                handshake_timeout: cfg.handshake_timeout,
                endpoints: Mutex::new([None, None]),
            }),
        })
    }

    fn endpoint_for(&self, addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
        let (slot, bind): (usize, SocketAddr) = if addr.is_ipv4() {
            (0, SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            (1, SocketAddr::from(([0u16; 8], 0)))
        };
        let mut endpoints = self.inner.endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(endpoint) = &endpoints[slot] {
            return Ok(endpoint.clone());
        }
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
        endpoints[slot] = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Connects to the node at `addr` and exchanges Hellos. With `expected`, the node must be
    /// that node. Errors: [`TransportError::Unreachable`] (no answer in time),
    /// [`TransportError::WrongCluster`], [`TransportError::Refused`], or
    /// [`TransportError::Handshake`] (TLS refused — certificates? — or a bad Hello).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<ClientConnection, TransportError> {
        let timeout = self.inner.handshake_timeout;
        match tokio::time::timeout(timeout, self.connect_inner(addr, expected)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Unreachable {
                peer: expected.unwrap_or(CLIENT_NODE_ID),
                reason: format!("{addr}: no handshake within {timeout:?}"),
            }),
        }
    }

    async fn connect_inner(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<ClientConnection, TransportError> {
        let endpoint = self.endpoint_for(addr)?;
        let peer = expected.unwrap_or(CLIENT_NODE_ID);
        // The server name is the address: node certificates carry their IPs as SANs.
        let connecting = endpoint
            .connect_with(self.inner.config.clone(), addr, &addr.ip().to_string())
            .map_err(|e| TransportError::Unreachable { peer, reason: format!("{addr}: {e}") })?;
        let connection = connecting.await.map_err(|e| connection_error(addr, peer, &e))?;
        let hello = Hello { node_id: CLIENT_NODE_ID, cluster_id: self.inner.cluster_id.clone() };
        let exchanged = async {
            let mut send = connection.open_uni().await.map_err(|e| e.to_string())?;
            send.write_all(&frame::encode(&hello).map_err(|e| e.to_string())?)
                .await
                .map_err(|e| e.to_string())?;
            // Nothing follows the Hello on this stream: a client sends no batches.
            let _ = send.finish();
            let mut recv = connection.accept_uni().await.map_err(|e| e.to_string())?;
            match frame::read_frame_max(&mut recv, HELLO_BYTES_MAX).await {
                Ok(Some(Frame::Hello(hello))) => Ok(hello),
                Ok(Some(other)) => Err(format!("expected a Hello, got a {:?} frame", other.kind())),
                Ok(None) => Err("stream ended before the Hello".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        .await;
        let theirs = match exchanged {
            Ok(hello) => hello,
            Err(reason) => {
                // A refusing node closes the connection with a code and a reason: prefer those.
                if let Some(closed) = connection.close_reason() {
                    return Err(connection_error(addr, peer, &closed));
                }
                connection.close(VarInt::from_u32(0), b"bad hello");
                return Err(TransportError::Handshake { addr, reason });
            }
        };
        let refuse = |reason: String| {
            connection.close(VarInt::from_u32(0), b"unexpected node");
            Err(TransportError::Handshake { addr, reason })
        };
        if theirs.cluster_id != self.inner.cluster_id {
            connection.close(VarInt::from_u32(0), b"wrong cluster");
            return Err(TransportError::WrongCluster {
                addr,
                reason: format!(
                    "node is in cluster {:?}, expected {:?}",
                    theirs.cluster_id, self.inner.cluster_id
                ),
            });
        }
        if theirs.node_id == CLIENT_NODE_ID {
            return refuse("the other side is a client, not a node".into());
        }
        if let Some(expected) = expected {
            if theirs.node_id != expected {
                return refuse(format!("expected node {expected} at {addr}, found node {}", theirs.node_id));
            }
        }
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| TransportError::Unreachable { peer, reason: format!("{addr}: {e}") })?;
        Ok(ClientConnection {
            node_id: theirs.node_id,
            addr,
            pipeline: Arc::new(Pipeline::start(theirs.node_id, send, recv)),
            connection,
            _endpoint: Arc::clone(&self.inner),
        })
    }

    /// Closes every connection made through this endpoint.
    pub fn close(&self) {
        let endpoints = self.inner.endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for endpoint in endpoints.iter().flatten() {
            endpoint.close(VarInt::from_u32(0), b"client closed");
        }
    }
}

/// Maps a failed connection to a transport error, decoding the node's refusal codes.
fn connection_error(addr: SocketAddr, peer: NodeId, e: &quinn::ConnectionError) -> TransportError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            if close.error_code == CLOSE_WRONG_CLUSTER {
                TransportError::WrongCluster { addr, reason }
            } else if close.error_code == CLOSE_REFUSED {
                TransportError::Refused { addr, reason }
            } else {
                TransportError::Handshake { addr, reason: format!("closed by the node: {reason}") }
            }
        }
        quinn::ConnectionError::TimedOut => {
            TransportError::Unreachable { peer, reason: format!("{addr}: no answer (timed out)") }
        }
        quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_) => {
            TransportError::Handshake {
                addr,
                reason: format!(
                    "{e} (is the node in the same TLS mode — --insecure or the same cluster CA?)"
                ),
            }
        }
        other => TransportError::Unreachable { peer, reason: format!("{addr}: {other}") },
    }
}

/// One client connection to one node; clones share it. Requests on it run concurrently,
/// pipelined on one stream.
#[derive(Clone, Debug)]
pub struct ClientConnection {
    node_id: NodeId,
    addr: SocketAddr,
    connection: quinn::Connection,
    pipeline: Arc<Pipeline>,
    /// Keeps the endpoint (its socket) alive as long as a connection through it exists.
    _endpoint: Arc<EndpointInner>,
}

impl ClientConnection {
    /// The node at the other end, as its Hello named it.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection (or its request stream) has closed: it is never reopened; dial
    /// again.
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some() || self.pipeline.is_dead()
    }

    /// Sends one request and waits at most `timeout` for its answer. `Unreachable` means it was
    /// never sent (it did not run); `Timeout`, `Lost`, `Remote` and `Protocol` mean it was sent
    /// and may have run.
    pub async fn request(&self, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        if self.is_closed() {
            return Err(TransportError::Unreachable {
                peer: self.node_id,
                reason: "connection closed".into(),
            });
        }
        let deadline = Instant::now() + timeout;
        self.pipeline.request(payload, deadline, timeout).await
    }

    pub fn close(&self) {
        self.connection.close(VarInt::from_u32(0), b"client closed");
    }
}
