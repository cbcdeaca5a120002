//! The transport over real QUIC on 127.0.0.1, and the conformance suite every `Transport` must
//! pass (run here against both `QuicTransport` and `MemTransport`).
//!
//! Robust on a loaded machine: every wait polls for its condition up to a generous deadline;
//! the only fixed waits are the "nothing arrives" windows of the negative tests, which follow a
//! positive control proving the same path works for a trusted node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flotilla_engine::ids::RangeId;
use flotilla_engine::raft::LogIndex;
use flotilla_engine::raft::{NodeId, Term};
use flotilla_engine::transport::frame::{self, Frame, Hello, Request};
use flotilla_engine::transport::tls::{self, TlsMode};
use flotilla_engine::transport::wire::HeartbeatEntry;
use flotilla_engine::transport::{
    handler_fn, MemHub, QuicConfig, QuicTransport, RaftBatch, RequestHandler, Transport, TransportError,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CLUSTER: &str = "test-cluster";
/// How long any positive condition may take on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a negative test watches for traffic that must not arrive.
const QUIET_WINDOW: Duration = Duration::from_secs(3);
const INBOUND_BATCHES_MAX: usize = 4096;
/// Marks connectivity probes, so sequence checks can skip them.
const PROBE_RANGE: RangeId = RangeId(u64::MAX);

/// A process-wide recorder that keeps counters by `name{peer=..}`, so tests can check that the
/// transport counts what it says it counts. Tests in this binary share it: assertions only
/// ever check lower bounds on series that the asserting test itself drives.
#[derive(Debug, Default)]
struct CountingRecorder {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

#[derive(Debug)]
struct AtomicCounter(Arc<AtomicU64>);

impl metrics::CounterFn for AtomicCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

fn series(name: &str, peer: &str) -> String {
    format!("{name}{{peer={peer}}}")
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let peer = key.labels().find(|l| l.key() == "peer").map_or("", |l| l.value());
        let mut counters = self.counters.lock().expect("counters");
        let cell = counters.entry(series(key.name(), peer)).or_default();
        metrics::Counter::from_arc(Arc::new(AtomicCounter(Arc::clone(cell))))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn recorder() -> &'static CountingRecorder {
    static RECORDER: OnceLock<&'static CountingRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static CountingRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("the only recorder in this test binary");
        recorder
    })
}

fn counter(name: &str, peer: u64) -> u64 {
    let key = series(name, &peer.to_string());
    recorder().counters.lock().expect("counters").get(&key).map_or(0, |c| c.load(Ordering::Relaxed))
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Answers `"<me> <- <from>: <payload>"`; a payload of `slow` never answers.
fn echo(me: NodeId) -> Arc<dyn RequestHandler> {
    handler_fn(move |from: NodeId, payload: Vec<u8>| async move {
        if payload == b"slow" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut out = format!("{me} <- {from}: ").into_bytes();
        out.extend(payload);
        out
    })
}

fn expected_echo(me: NodeId, from: NodeId, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{me} <- {from}: ").into_bytes();
    out.extend_from_slice(payload);
    out
}

fn probe(from: NodeId, to: NodeId) -> RaftBatch {
    RaftBatch { from, to, quiesce: vec![(PROBE_RANGE, Term(1))], ..RaftBatch::default() }
}

fn is_probe(batch: &RaftBatch) -> bool {
    batch.quiesce.first().is_some_and(|(range, _)| *range == PROBE_RANGE)
}

fn numbered(from: NodeId, to: NodeId, seq: u64) -> RaftBatch {
    RaftBatch {
        from,
        to,
        heartbeats: vec![HeartbeatEntry {
            range: RangeId(1),
            term: Term(1),
            commit: LogIndex(seq),
            read_seq: seq,
        }],
        ..RaftBatch::default()
    }
}

/// Sends probes from `from` to `to` until one arrives at `to_rx`; other traffic is discarded.
async fn establish<T: Transport>(
    from_transport: &T,
    from: NodeId,
    to: NodeId,
    to_rx: &mut mpsc::Receiver<RaftBatch>,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no batch from {from} reached {to} within {DEADLINE:?}");
        from_transport.send(probe(from, to));
        let wait = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                got = to_rx.recv() => match got {
                    Some(batch) if batch.from == from && is_probe(&batch) => {
                        assert_eq!(batch.to, to);
                        return;
                    }
                    Some(_) => continue,
                    None => panic!("inbound channel of {to} closed"),
                },
                _ = &mut wait => break,
            }
        }
    }
}

/// The contract every transport meets (see `Transport`'s "To ensure correctness").
async fn conformance<T: Transport>(
    a: &T,
    a_id: NodeId,
    a_rx: &mut mpsc::Receiver<RaftBatch>,
    b: &T,
    b_id: NodeId,
    b_rx: &mut mpsc::Receiver<RaftBatch>,
) {
    establish(a, a_id, b_id, b_rx).await;
    establish(b, b_id, a_id, a_rx).await;

    // In order, without duplicates. The contract allows drops, but an idle loopback link with
    // a queue far larger than the burst drops nothing, so all must arrive.
    const BURST: u64 = 200;
    for seq in 0..BURST {
        a.send(numbered(a_id, b_id, seq));
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < BURST as usize {
        let batch = tokio::time::timeout_at(deadline, b_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {BURST} batches arrived: {seen:?}", seen.len()))
            .expect("inbound open");
        if is_probe(&batch) {
            continue;
        }
        assert_eq!((batch.from, batch.to), (a_id, b_id));
        seen.push(batch.heartbeats[0].read_seq);
    }
    assert_eq!(seen, (0..BURST).collect::<Vec<_>>(), "batches reordered or duplicated");

    // Requests in both directions; the handler sees the true sender.
    let answer = a.request(b_id, b"ping".to_vec(), REQUEST_TIMEOUT).await.expect("a -> b request");
    assert_eq!(answer, expected_echo(b_id, a_id, b"ping"));
    let answer = b.request(a_id, b"pong".to_vec(), REQUEST_TIMEOUT).await.expect("b -> a request");
    assert_eq!(answer, expected_echo(a_id, b_id, b"pong"));
    // Concurrent requests each get their own answer.
    let (x, y) = tokio::join!(
        a.request(b_id, b"x".to_vec(), REQUEST_TIMEOUT),
        a.request(b_id, b"y".to_vec(), REQUEST_TIMEOUT)
    );
    assert_eq!(x.expect("x"), expected_echo(b_id, a_id, b"x"));
    assert_eq!(y.expect("y"), expected_echo(b_id, a_id, b"y"));

    // A handler that does not answer in time.
    match a.request(b_id, b"slow".to_vec(), Duration::from_millis(300)).await {
        Err(TransportError::Timeout { peer, .. }) => assert_eq!(peer, b_id),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // A node nobody knows.
    match a.request(NodeId(999), b"ping".to_vec(), Duration::from_millis(300)).await {
        Err(TransportError::Unreachable { peer, .. }) => assert_eq!(peer, NodeId(999)),
        other => panic!("expected unreachable, got {other:?}"),
    }
    // Still healthy after the timeout.
    let answer = a.request(b_id, b"again".to_vec(), REQUEST_TIMEOUT).await.expect("request after timeout");
    assert_eq!(answer, expected_echo(b_id, a_id, b"again"));
}

struct Node {
    id: NodeId,
    transport: QuicTransport,
    rx: mpsc::Receiver<RaftBatch>,
}

async fn start_node(id: u64, listen: SocketAddr, peers: &[(u64, SocketAddr)], tls: TlsMode) -> Node {
    // Install before any transport counts anything.
    recorder();
    let id = NodeId(id);
    let mut cfg = QuicConfig::new(id, listen, CLUSTER, tls);
    cfg.peers = peers.iter().map(|&(peer, addr)| (NodeId(peer), addr)).collect::<BTreeMap<_, _>>();
    let (tx, rx) = mpsc::channel(INBOUND_BATCHES_MAX);
    let transport = QuicTransport::start(cfg, tx, echo(id)).await.expect("start transport");
    Node { id, transport, rx }
}

/// Starts a node on a specific address, retrying while the previous owner's socket is released.
async fn restart_node(id: u64, listen: SocketAddr, peers: &[(u64, SocketAddr)]) -> Node {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let nid = NodeId(id);
        let mut cfg = QuicConfig::new(nid, listen, CLUSTER, TlsMode::Insecure);
        cfg.peers = peers.iter().map(|&(peer, addr)| (NodeId(peer), addr)).collect();
        let (tx, rx) = mpsc::channel(INBOUND_BATCHES_MAX);
        match QuicTransport::start(cfg, tx, echo(nid)).await {
            Ok(transport) => return Node { id: nid, transport, rx },
            Err(TransportError::Bind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart of n{id} failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_mem() {
    let hub = MemHub::new(7);
    let (tx1, mut rx1) = mpsc::channel(INBOUND_BATCHES_MAX);
    let (tx2, mut rx2) = mpsc::channel(INBOUND_BATCHES_MAX);
    let a = hub.join(NodeId(1), tx1, echo(NodeId(1)));
    let b = hub.join(NodeId(2), tx2, echo(NodeId(2)));
    conformance(&a, NodeId(1), &mut rx1, &b, NodeId(2), &mut rx2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_quic() {
    // The higher id accepts, so it starts first and the dialer learns its address.
    let mut b = start_node(2, any_port(), &[], TlsMode::Insecure).await;
    let mut a = start_node(1, any_port(), &[(2, b.transport.local_addr())], TlsMode::Insecure).await;
    conformance(&a.transport, a.id, &mut a.rx, &b.transport, b.id, &mut b.rx).await;
    // Node ids 1 and 2 are shared with other tests in this binary, so only lower bounds hold.
    assert!(counter("flotilla_transport_batches_sent_total", 2) >= 200);
    assert!(counter("flotilla_transport_batches_received_total", 1) >= 200);
    assert!(counter("flotilla_transport_bytes_sent_total", 2) > 200 * 9);
    assert!(counter("flotilla_transport_connects_total", 2) >= 1);
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_batches_and_requests_in_every_direction() {
    let mut n3 = start_node(3, any_port(), &[], TlsMode::Insecure).await;
    let a3 = n3.transport.local_addr();
    let mut n2 = start_node(2, any_port(), &[(3, a3)], TlsMode::Insecure).await;
    let a2 = n2.transport.local_addr();
    let mut n1 = start_node(1, any_port(), &[(2, a2), (3, a3)], TlsMode::Insecure).await;
    assert_ne!(a2, a3);

    establish(&n1.transport, n1.id, n2.id, &mut n2.rx).await;
    establish(&n1.transport, n1.id, n3.id, &mut n3.rx).await;
    establish(&n2.transport, n2.id, n1.id, &mut n1.rx).await;
    establish(&n2.transport, n2.id, n3.id, &mut n3.rx).await;
    establish(&n3.transport, n3.id, n1.id, &mut n1.rx).await;
    establish(&n3.transport, n3.id, n2.id, &mut n2.rx).await;

    let nodes = [&n1, &n2, &n3];
    for from in nodes {
        for to in nodes {
            if from.id == to.id {
                continue;
            }
            let answer =
                from.transport.request(to.id, b"hi".to_vec(), REQUEST_TIMEOUT).await.expect("request");
            assert_eq!(answer, expected_echo(to.id, from.id, b"hi"));
        }
    }
    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_either_side_restarts() {
    let mut n2 = start_node(2, any_port(), &[], TlsMode::Insecure).await;
    let a2 = n2.transport.local_addr();
    let mut n1 = start_node(1, any_port(), &[(2, a2)], TlsMode::Insecure).await;
    establish(&n1.transport, n1.id, n2.id, &mut n2.rx).await;
    establish(&n2.transport, n2.id, n1.id, &mut n1.rx).await;

    // The acceptor restarts on the same address: the dialer notices the close and redials.
    n2.transport.shutdown().await;
    drop(n2);
    let mut n2 = restart_node(2, a2, &[]).await;
    establish(&n1.transport, n1.id, n2.id, &mut n2.rx).await;
    establish(&n2.transport, n2.id, n1.id, &mut n1.rx).await;
    let answer = n1.transport.request(n2.id, b"back".to_vec(), REQUEST_TIMEOUT).await.expect("request");
    assert_eq!(answer, expected_echo(n2.id, n1.id, b"back"));

    // The dialer restarts (on a new port, even): the acceptor takes the newer connection.
    n1.transport.shutdown().await;
    drop(n1);
    let mut n1 = start_node(1, any_port(), &[(2, a2)], TlsMode::Insecure).await;
    establish(&n1.transport, n1.id, n2.id, &mut n2.rx).await;
    establish(&n2.transport, n2.id, n1.id, &mut n1.rx).await;
    let answer =
        n2.transport.request(n1.id, b"hello again".to_vec(), REQUEST_TIMEOUT).await.expect("request");
    assert_eq!(answer, expected_echo(n1.id, n2.id, b"hello again"));

    n1.transport.shutdown().await;
    n2.transport.shutdown().await;
}

fn node_certs(ca: &Path, root: &Path, name: &str) -> TlsMode {
    let dir = root.join(name);
    tls::create_node_cert(ca, &dir, name, &["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("node cert");
    TlsMode::Certs { dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_cluster_ca() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = root.path().join("ca");
    tls::create_ca(&ca).expect("ca");
    let mut n2 = start_node(2, any_port(), &[], node_certs(&ca, root.path(), "n2")).await;
    let mut n1 =
        start_node(1, any_port(), &[(2, n2.transport.local_addr())], node_certs(&ca, root.path(), "n1"))
            .await;
    conformance(&n1.transport, n1.id, &mut n1.rx, &n2.transport, n2.id, &mut n2.rx).await;
    n1.transport.shutdown().await;
    n2.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_foreign_ca_certificate_cannot_connect() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = root.path().join("ca");
    let foreign_ca = root.path().join("foreign-ca");
    tls::create_ca(&ca).expect("ca");
    tls::create_ca(&foreign_ca).expect("foreign ca");

    // Trusted nodes 2 and 3; foreign node 4 accepts (the trusted nodes dial it) and foreign
    // node 1 dials (the trusted nodes accept from it): both directions of refusal.
    let mut n4 = start_node(4, any_port(), &[], node_certs(&foreign_ca, root.path(), "n4")).await;
    let a4 = n4.transport.local_addr();
    let mut n3 = start_node(3, any_port(), &[(4, a4)], node_certs(&ca, root.path(), "n3")).await;
    let a3 = n3.transport.local_addr();
    let mut n2 = start_node(2, any_port(), &[(3, a3), (4, a4)], node_certs(&ca, root.path(), "n2")).await;
    let a2 = n2.transport.local_addr();
    let mut n1 =
        start_node(1, any_port(), &[(2, a2), (3, a3), (4, a4)], node_certs(&foreign_ca, root.path(), "n1"))
            .await;

    // Positive control: the trusted pair works, so the dials to and from the foreign nodes have
    // had their chance too.
    establish(&n2.transport, n2.id, n3.id, &mut n3.rx).await;
    establish(&n3.transport, n3.id, n2.id, &mut n2.rx).await;

    let quiet_until = Instant::now() + QUIET_WINDOW;
    while Instant::now() < quiet_until {
        for to in [2, 3] {
            n1.transport.send(probe(n1.id, NodeId(to)));
            n4.transport.send(probe(n4.id, NodeId(to)));
        }
        for from in [&n2, &n3] {
            from.transport.send(probe(from.id, n1.id));
            from.transport.send(probe(from.id, n4.id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for trusted in [&mut n2, &mut n3] {
        while let Ok(batch) = trusted.rx.try_recv() {
            assert!(
                batch.from == NodeId(2) || batch.from == NodeId(3),
                "{} got a batch from foreign node {}",
                trusted.id,
                batch.from
            );
        }
        assert!(!trusted.transport.is_connected(NodeId(1)));
        assert!(!trusted.transport.is_connected(NodeId(4)));
    }
    assert!(n1.rx.try_recv().is_err(), "foreign node 1 received a batch");
    assert!(n4.rx.try_recv().is_err(), "foreign node 4 received a batch");

    let short = Duration::from_millis(500);
    for (from, to) in [(&n2, 1), (&n2, 4), (&n3, 4), (&n1, 2), (&n4, 3)] {
        match from.transport.request(NodeId(to), b"let me in".to_vec(), short).await {
            Err(TransportError::Unreachable { .. }) => {}
            other => panic!("request {} -> n{to} should be unreachable, got {other:?}", from.id),
        }
    }
    // The trusted pair is unaffected.
    let answer = n2.transport.request(n3.id, b"ok".to_vec(), REQUEST_TIMEOUT).await.expect("trusted request");
    assert_eq!(answer, expected_echo(n3.id, n2.id, b"ok"));
    for node in [&n1, &n2, &n3, &n4] {
        node.transport.shutdown().await;
    }
}

/// A raw QUIC client that speaks whatever bytes a test wants, with the insecure TLS config.
async fn raw_connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls::insecure_client_config().expect("tls"))
            .expect("quic tls");
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    endpoint.connect_with(config, addr, "127.0.0.1").expect("connect").await.expect("handshake")
}

async fn assert_closed_by_peer(connection: &quinn::Connection, what: &str) {
    tokio::time::timeout(DEADLINE, connection.closed())
        .await
        .unwrap_or_else(|_| panic!("receiver did not close the connection after {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_do_not_hurt_the_receiver() {
    // Node 1 is impersonated by the attacker below; its frame errors are counted under it.
    let frame_errors_before = counter("flotilla_transport_frame_errors_total", 1);
    let mut n3 = start_node(3, any_port(), &[], TlsMode::Insecure).await;
    let a3 = n3.transport.local_addr();
    let mut n2 = start_node(2, any_port(), &[(3, a3)], TlsMode::Insecure).await;
    establish(&n2.transport, n2.id, n3.id, &mut n3.rx).await;

    let attacker = quinn::Endpoint::client(any_port()).expect("client endpoint");
    let hello = frame::encode(&Hello { node_id: NodeId(1), cluster_id: CLUSTER.into() }).expect("hello");

    // 1. An oversized declared length instead of a Hello.
    let connection = raw_connect(&attacker, a3).await;
    let mut uni = connection.open_uni().await.expect("uni");
    let mut oversized = b"FLT\x01\x01".to_vec();
    oversized.extend_from_slice(&u32::MAX.to_le_bytes());
    uni.write_all(&oversized).await.expect("write");
    assert_closed_by_peer(&connection, "an oversized Hello").await;

    // 2. Random bytes instead of a Hello.
    let connection = raw_connect(&attacker, a3).await;
    let mut uni = connection.open_uni().await.expect("uni");
    uni.write_all(b"GET / HTTP/1.1\r\nHost: flotilla\r\n\r\n").await.expect("write");
    assert_closed_by_peer(&connection, "garbage instead of a Hello").await;

    // 3. A valid Hello, then a garbage batch frame: the batch stream cannot resynchronise, so
    //    the connection goes.
    let connection = raw_connect(&attacker, a3).await;
    let mut uni = connection.open_uni().await.expect("uni");
    uni.write_all(&hello).await.expect("write hello");
    let mut bad_batch = b"FLT\x01\x01".to_vec();
    bad_batch.extend_from_slice(&5u32.to_le_bytes());
    bad_batch.extend_from_slice(&[0xff; 5]);
    uni.write_all(&bad_batch).await.expect("write garbage");
    assert_closed_by_peer(&connection, "a garbage batch frame").await;

    // 4. A valid Hello, then garbage on a request stream: that stream is closed, the connection
    //    keeps serving a well-formed request on the next stream.
    let connection = raw_connect(&attacker, a3).await;
    let mut uni = connection.open_uni().await.expect("uni");
    uni.write_all(&hello).await.expect("write hello");
    let (mut send, mut recv) = connection.open_bi().await.expect("bi");
    let mut oversized_request = b"FLT\x01\x03".to_vec();
    oversized_request.extend_from_slice(&u32::MAX.to_le_bytes());
    send.write_all(&oversized_request).await.expect("write");
    let _ = send.finish();
    let result = tokio::time::timeout(DEADLINE, frame::read_frame(&mut recv)).await.expect("answer or close");
    assert!(result.is_err(), "a bad request stream must be reset, got {result:?}");
    let (mut send, mut recv) = connection.open_bi().await.expect("bi");
    send.write_all(&frame::encode(&Request { id: 42, payload: b"fine".to_vec() }).expect("encode"))
        .await
        .expect("write");
    let _ = send.finish();
    match tokio::time::timeout(DEADLINE, frame::read_frame(&mut recv)).await.expect("answer") {
        Ok(Some(Frame::Response(response))) => {
            assert_eq!(response.id, 42);
            assert_eq!(response.result, Ok(expected_echo(n3.id, NodeId(1), b"fine")));
        }
        other => panic!("expected a response, got {other:?}"),
    }
    connection.close(0u32.into(), b"done");
    // Cases 3 and 4 happened after the Hello named node 1 (cases 1 and 2 count as "unknown").
    assert!(counter("flotilla_transport_frame_errors_total", 1) >= frame_errors_before + 2);

    // The receiver kept serving its real peer throughout.
    establish(&n2.transport, n2.id, n3.id, &mut n3.rx).await;
    establish(&n3.transport, n3.id, n2.id, &mut n2.rx).await;
    let answer =
        n2.transport.request(n3.id, b"still here?".to_vec(), REQUEST_TIMEOUT).await.expect("request");
    assert_eq!(answer, expected_echo(n3.id, n2.id, b"still here?"));

    attacker.close(0u32.into(), b"done");
    n2.transport.shutdown().await;
    n3.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let mut n2 = start_node(2, any_port(), &[], TlsMode::Insecure).await;
    let mut cfg = QuicConfig::new(NodeId(1), any_port(), "another-cluster", TlsMode::Insecure);
    cfg.peers.insert(NodeId(2), n2.transport.local_addr());
    let (tx, mut rx1) = mpsc::channel(INBOUND_BATCHES_MAX);
    let n1 = QuicTransport::start(cfg, tx, echo(NodeId(1))).await.expect("start");
    let quiet_until = Instant::now() + QUIET_WINDOW;
    while Instant::now() < quiet_until {
        n1.send(probe(NodeId(1), NodeId(2)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n2.rx.try_recv().is_err(), "a batch crossed clusters");
    assert!(rx1.try_recv().is_err());
    assert!(!n2.transport.is_connected(NodeId(1)));
    assert!(matches!(
        n1.request(NodeId(2), b"hi".to_vec(), Duration::from_millis(500)).await,
        Err(TransportError::Unreachable { .. })
    ));
    n1.shutdown().await;
    n2.transport.shutdown().await;
}
