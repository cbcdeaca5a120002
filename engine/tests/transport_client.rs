//! The transport's client role over real QUIC on 127.0.0.1: a process that is not a node
//! connects with a Hello naming node 0, sends requests, and is never a Raft peer.
//!
//! Every wait polls up to a generous deadline; the only fixed waits are the "nothing arrives"
//! windows of the negative tests, which follow a positive control.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::ids::RangeId;
use flotilla_engine::raft::{NodeId, Term};
use flotilla_engine::transport::frame::{self, Frame, Hello};
use flotilla_engine::transport::tls::{self, TlsMode};
use flotilla_engine::transport::{
    handler_fn, ClientEndpoint, ClientEndpointConfig, QuicConfig, QuicTransport, RaftBatch, RequestHandler,
    Transport, TransportError, CLIENT_NODE_ID,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CLUSTER: &str = "client-test-cluster";
const DEADLINE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const QUIET_WINDOW: Duration = Duration::from_secs(2);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Answers `"<me> <- <from>: <payload>"`; `slow` sleeps an hour; `nap` sleeps 50 ms first.
fn echo(me: NodeId) -> Arc<dyn RequestHandler> {
    handler_fn(move |from: NodeId, payload: Vec<u8>| async move {
        if payload == b"slow" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if payload.starts_with(b"nap") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut out = format!("{me} <- {from}: ").into_bytes();
        out.extend(payload);
        out
    })
}

struct Node {
    transport: QuicTransport,
    rx: mpsc::Receiver<RaftBatch>,
}

async fn start_node(id: u64, tls: TlsMode, configure: impl FnOnce(&mut QuicConfig)) -> Node {
    let mut cfg = QuicConfig::new(NodeId(id), any_port(), CLUSTER, tls);
    configure(&mut cfg);
    let (tx, rx) = mpsc::channel(1024);
    let transport = QuicTransport::start(cfg, tx, echo(NodeId(id))).await.expect("start node");
    Node { transport, rx }
}

fn client(tls: TlsMode, cluster: &str) -> ClientEndpoint {
    ClientEndpoint::new(ClientEndpointConfig::new(tls, cluster)).expect("client endpoint")
}

fn probe(from: NodeId, to: NodeId) -> RaftBatch {
    RaftBatch { from, to, quiesce: vec![(RangeId(u64::MAX), Term(1))], ..RaftBatch::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_served_as_node_zero_and_is_never_a_peer() {
    let node = start_node(2, TlsMode::Insecure, |_| {}).await;
    let endpoint = client(TlsMode::Insecure, CLUSTER);
    let connection = endpoint.connect(node.transport.local_addr(), None).await.expect("connect");
    assert_eq!(connection.node_id(), NodeId(2), "the node's Hello names it");
    let answer = connection.request(b"ping".to_vec(), REQUEST_TIMEOUT).await.expect("request");
    assert_eq!(answer, b"n2 <- n0: ping".to_vec(), "the handler sees from = node 0");
    assert_eq!(node.transport.clients_connected(), 1);
    assert!(!node.transport.is_connected(CLIENT_NODE_ID), "a client is not in the peer map");
    // A node never sends batches to node 0; `send` drops them.
    node.transport.send(probe(NodeId(2), CLIENT_NODE_ID));

    // Connecting with the wrong expected id is refused by the client.
    match endpoint.connect(node.transport.local_addr(), Some(NodeId(3))).await {
        Err(TransportError::Handshake { reason, .. }) => {
            assert!(reason.contains("expected node n3"), "{reason}")
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }

    // A request that never answers fails as Timeout (sent: it may have run), not Unreachable.
    match connection.request(b"slow".to_vec(), Duration::from_millis(300)).await {
        Err(TransportError::Timeout { peer, .. }) => assert_eq!(peer, NodeId(2)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    connection.close();
    let deadline = Instant::now() + DEADLINE;
    while node.transport.clients_connected() != 0 {
        assert!(Instant::now() < deadline, "the client slot was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match connection.request(b"late".to_vec(), REQUEST_TIMEOUT).await {
        Err(TransportError::Unreachable { .. }) => {}
        other => panic!("a closed connection must be Unreachable (not sent), got {other:?}"),
    }
    node.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_multiplex_on_one_client_connection() {
    let node = start_node(2, TlsMode::Insecure, |_| {}).await;
    let connection =
        client(TlsMode::Insecure, CLUSTER).connect(node.transport.local_addr(), None).await.expect("connect");
    // Pipelined on one stream, answers out of order (the naps), more callers than the node's
    // handler permits: each caller still gets its own answer.
    let callers: Vec<_> = (0..400)
        .map(|i| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let payload = format!("nap{i}").into_bytes();
                let answer = connection.request(payload.clone(), REQUEST_TIMEOUT).await.expect("request");
                let mut expected = b"n2 <- n0: ".to_vec();
                expected.extend(payload);
                assert_eq!(answer, expected);
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    node.transport.shutdown().await;
}

/// A request in flight when its node goes may have run: `Lost` (or `Timeout`), never
/// `Unreachable`; after that the connection reports itself closed and new requests fail at
/// once as never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_request_cut_off_by_a_node_going_away_is_an_unknown_outcome() {
    let node = start_node(2, TlsMode::Insecure, |_| {}).await;
    let connection =
        client(TlsMode::Insecure, CLUSTER).connect(node.transport.local_addr(), None).await.expect("connect");
    assert!(connection.request(b"warm".to_vec(), REQUEST_TIMEOUT).await.is_ok());
    let in_flight = {
        let connection = connection.clone();
        tokio::spawn(async move { connection.request(b"slow".to_vec(), REQUEST_TIMEOUT).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.transport.shutdown().await;
    match in_flight.await.expect("caller") {
        Err(TransportError::Lost { .. } | TransportError::Timeout { .. }) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    let deadline = Instant::now() + DEADLINE;
    while !connection.is_closed() {
        assert!(Instant::now() < deadline, "the connection never noticed the node went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match connection.request(b"after".to_vec(), REQUEST_TIMEOUT).await {
        Err(TransportError::Unreachable { .. }) => {}
        other => panic!("expected Unreachable after the close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_cannot_inject_raft_batches() {
    let mut node2 = start_node(2, TlsMode::Insecure, |_| {}).await;
    let a2 = node2.transport.local_addr();
    // Positive control: a real peer's batch arrives.
    let node1 = start_node(1, TlsMode::Insecure, |cfg| {
        cfg.peers.insert(NodeId(2), a2);
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    'control: loop {
        assert!(Instant::now() < deadline, "the control batch never arrived");
        node1.transport.send(probe(NodeId(1), NodeId(2)));
        while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(100), node2.rx.recv()).await {
            if batch.from == NodeId(1) {
                break 'control;
            }
        }
    }
    node1.transport.shutdown().await;
    while node2.rx.try_recv().is_ok() {}

    let attacker = quinn::Endpoint::client(any_port()).expect("endpoint");
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls::insecure_client_config().expect("tls"))
            .expect("quic tls");
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let hello = frame::encode(&Hello { node_id: CLIENT_NODE_ID, cluster_id: CLUSTER.into() }).expect("hello");
    for forged in [probe(NodeId(1), NodeId(2)), probe(CLIENT_NODE_ID, NodeId(2))] {
        let connection = attacker
            .connect_with(config.clone(), a2, "127.0.0.1")
            .expect("connect")
            .await
            .expect("handshake");
        let mut uni = connection.open_uni().await.expect("uni");
        uni.write_all(&hello).await.expect("hello");
        // The node answers a client Hello with its own.
        let mut theirs = connection.accept_uni().await.expect("node hello stream");
        match frame::read_frame(&mut theirs).await {
            Ok(Some(Frame::Hello(h))) => assert_eq!(h.node_id, NodeId(2)),
            other => panic!("expected the node's Hello, got {other:?}"),
        }
        uni.write_all(&frame::encode(&forged).expect("batch")).await.expect("batch");
        tokio::time::timeout(DEADLINE, connection.closed())
            .await
            .expect("the node must close a client connection that sends a batch");
    }
    let quiet_until = Instant::now() + QUIET_WINDOW;
    while Instant::now() < quiet_until {
        if let Ok(batch) = node2.rx.try_recv() {
            panic!("a batch from a client connection reached the host: {batch:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!node2.transport.is_connected(CLIENT_NODE_ID));
    attacker.close(0u32.into(), b"done");
    node2.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_cluster_is_refused_with_a_reason() {
    let node = start_node(2, TlsMode::Insecure, |_| {}).await;
    match client(TlsMode::Insecure, "some-other-cluster").connect(node.transport.local_addr(), None).await {
        Err(TransportError::WrongCluster { reason, .. }) => {
            assert!(reason.contains(CLUSTER) && reason.contains("some-other-cluster"), "{reason}")
        }
        other => panic!("expected WrongCluster, got {other:?}"),
    }
    assert_eq!(node.transport.clients_connected(), 0);
    node.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_are_bounded() {
    let node = start_node(2, TlsMode::Insecure, |cfg| cfg.client_connections_max = 1).await;
    let addr = node.transport.local_addr();
    let endpoint = client(TlsMode::Insecure, CLUSTER);
    let first = endpoint.connect(addr, None).await.expect("first client");
    match endpoint.connect(addr, None).await {
        Err(TransportError::Refused { reason, .. }) => assert!(reason.contains("at most 1"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    // The first keeps working; once it leaves, its slot is free again.
    first.request(b"still".to_vec(), REQUEST_TIMEOUT).await.expect("first still served");
    first.close();
    let deadline = Instant::now() + DEADLINE;
    let second = loop {
        match endpoint.connect(addr, None).await {
            Ok(connection) => break connection,
            Err(TransportError::Refused { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("a freed slot must admit a new client: {e}"),
        }
    };
    second.request(b"hi".to_vec(), REQUEST_TIMEOUT).await.expect("second served");
    node.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_certs_mode_a_client_needs_a_cluster_certificate() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = root.path().join("ca");
    tls::create_ca(&ca).expect("ca");
    let sans = ["127.0.0.1".to_string()];
    let node_dir = root.path().join("n2");
    tls::create_node_cert(&ca, &node_dir, "n2", &sans).expect("node cert");
    // A client certificate is an ordinary node certificate signed by the same CA.
    let client_dir = root.path().join("client");
    tls::create_node_cert(&ca, &client_dir, "client", &sans).expect("client cert");
    let foreign_ca = root.path().join("foreign-ca");
    tls::create_ca(&foreign_ca).expect("foreign ca");
    let foreign_dir = root.path().join("foreign");
    tls::create_node_cert(&foreign_ca, &foreign_dir, "foreign", &sans).expect("foreign cert");

    let node = start_node(2, TlsMode::Certs { dir: node_dir }, |_| {}).await;
    let addr = node.transport.local_addr();
    let trusted =
        client(TlsMode::Certs { dir: client_dir }, CLUSTER).connect(addr, None).await.expect("trusted");
    assert_eq!(
        trusted.request(b"x".to_vec(), REQUEST_TIMEOUT).await.expect("request"),
        b"n2 <- n0: x".to_vec()
    );
    for (what, tls) in
        [("no certificate", TlsMode::Insecure), ("a foreign CA", TlsMode::Certs { dir: foreign_dir })]
    {
        match client(tls, CLUSTER).connect(addr, None).await {
            Err(TransportError::Handshake { .. } | TransportError::Unreachable { .. }) => {}
            Ok(connection) => {
                // TLS 1.3 may finish the client's side before the server rejects the
                // certificate; then nothing can be served.
                let result = connection.request(b"x".to_vec(), Duration::from_secs(5)).await;
                assert!(result.is_err(), "a client with {what} was served");
            }
            Err(e) => panic!("a client with {what}: unexpected error {e}"),
        }
    }
    node.transport.shutdown().await;
}
