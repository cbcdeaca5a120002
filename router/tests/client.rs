//! The native client against real nodes (in-process `Node::start` on 127.0.0.1, real QUIC,
//! real redb): operations across ranges, routing straight to leaders from a follower's address,
//! hint following after a leader change, many concurrent callers on one client, and a wrong
//! cluster id refused.

mod nodes;

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_engine::raft::NodeId;
use flotilla_router::client::{Client, ClientError, ClientOptions, SetCondition};
use nodes::Cluster;
use tokio::time::Instant;

/// A key whose first byte walks the printable span, so keys land in every range.
fn key(i: u64) -> Vec<u8> {
    format!("{}key-{i:05}", (b'!' + (i % 94) as u8) as char).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_scan_across_ranges() {
    let cluster = Cluster::start("client-ops", 3, 4).await;
    let client = Client::connect(&cluster.addrs[..1], ClientOptions::insecure()).await.expect("connect");
    assert_eq!(client.ranges().len(), 4, "the client learned every range");
    assert_eq!(client.members().len(), 3);

    let mut expected = BTreeMap::new();
    for i in 0..200 {
        let (k, v) = (key(i), format!("value-{i}").into_bytes());
        client.put(&k, &v).await.expect("put");
        expected.insert(k, v);
    }
    for (k, v) in &expected {
        assert_eq!(client.get(k).await.expect("get").as_ref(), Some(v));
    }
    assert_eq!(client.get(b"absent").await.expect("get"), None);

    // A full scan crosses every range, in key order.
    let all = client.scan(b"", b"", 10_000).await.expect("scan");
    assert_eq!(all, expected.clone().into_iter().collect::<Vec<_>>());
    // Limits and bounds that straddle range boundaries.
    let some = client.scan(b"", b"", 50).await.expect("scan");
    assert_eq!(some, all[..50].to_vec());
    let (lo, hi) = (b"0".to_vec(), b"p".to_vec());
    let inside: Vec<_> =
        expected.iter().filter(|(k, _)| **k >= lo && **k < hi).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(inside.len() > 50, "the bounds cover several ranges");
    assert_eq!(client.scan(&lo, &hi, 10_000).await.expect("scan"), inside);
    assert_eq!(client.scan(&lo, &hi, 7).await.expect("scan"), inside[..7].to_vec());

    // Deletes say whether the key existed.
    for i in 0..20 {
        assert!(client.delete(&key(i)).await.expect("delete"));
        assert!(!client.delete(&key(i)).await.expect("delete again"));
        assert_eq!(client.get(&key(i)).await.expect("get"), None);
    }
    assert_eq!(client.scan(b"", b"", 10_000).await.expect("scan").len(), 180);

    // The cheaper extras.
    assert_eq!(client.incr_by(b"counter", 5).await.expect("incr"), 5);
    assert_eq!(client.incr_by(b"counter", -2).await.expect("incr"), 3);
    assert!(matches!(client.incr_by(&key(50), 1).await, Err(ClientError::Rejected(_))));
    assert!(!client.put_if(b"counter", b"x", SetCondition::IfAbsent).await.expect("nx"));
    assert!(client.put_if(b"fresh", b"x", SetCondition::IfAbsent).await.expect("nx"));
    assert_eq!(client.append(b"fresh", b"yz").await.expect("append"), 3);
    let huge = vec![b'k'; flotilla_engine::kv::KEY_BYTES_MAX + 1];
    assert!(matches!(client.put(&huge, b"v").await, Err(ClientError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_addressed_client_sends_requests_straight_to_leaders() {
    let cluster = Cluster::start("client-follower", 3, 4).await;
    let leaders = cluster.wait_for_leaders().await;
    // The seed is node 1; make sure some range is led elsewhere, so routing has work to do.
    let seed = NodeId(1);
    if leaders.iter().all(|&(_, l)| l == seed) {
        let (range, _) = leaders[0];
        cluster.node(seed).store.transfer_leader(range, NodeId(2)).await.expect("transfer");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let leaders = loop {
        let leaders = cluster.wait_for_leaders().await;
        if leaders.iter().any(|&(_, l)| l != seed) {
            break leaders;
        }
        assert!(Instant::now() < deadline, "leadership never moved off the seed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let client = Client::connect(&[cluster.addrs[0]], ClientOptions::insecure()).await.expect("connect");
    // Warm up: one write per range teaches the client every leader (if Describe did not).
    for i in 0..94 {
        client.put(&key(i), b"warm").await.expect("warm-up put");
    }
    for r in client.ranges() {
        let actual = leaders.iter().find(|(id, _)| *id == r.id).map(|&(_, l)| l);
        assert_eq!(r.leader, actual, "the client's leader for {}", r.id);
    }
    let before = client.stats();
    const OPS: u64 = 300;
    for i in 0..OPS / 2 {
        client.put(&key(i), b"v").await.expect("put");
        assert_eq!(client.get(&key(i)).await.expect("get"), Some(b"v".to_vec()));
    }
    let after = client.stats();
    assert_eq!(after.operations - before.operations, OPS);
    assert_eq!(
        after.requests - before.requests,
        OPS,
        "every request went straight to its leader (no redirects): {before:?} -> {after:?}"
    );
    assert_eq!(after.not_leader, before.not_leader);
    // One connection per node that leads something (the seed's counts once).
    let leader_nodes: std::collections::BTreeSet<NodeId> = leaders.iter().map(|&(_, l)| l).collect();
    for &node in &leader_nodes {
        assert_eq!(cluster.node(node).clients_connected(), 1, "{node} serves the client once");
    }
    assert!(after.connects as usize <= 3, "at most one connection per node: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_leader_change() {
    let cluster = Cluster::start("client-transfer", 3, 1).await;
    let client = Client::connect(&cluster.addrs, ClientOptions::insecure()).await.expect("connect");
    client.put(b"k", b"before").await.expect("put");
    let leaders = cluster.wait_for_leaders().await;
    let (range, old) = leaders[0];
    let new = if old == NodeId(3) { NodeId(1) } else { NodeId(3) };
    cluster.node(old).store.transfer_leader(range, new).await.expect("transfer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.wait_for_leaders().await[0].1 != new {
        assert!(Instant::now() < deadline, "transfer did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client still believes in the old leader: the first attempt is refused with a hint.
    assert_eq!(client.ranges()[0].leader, Some(old));
    assert_eq!(client.get(b"k").await.expect("get"), Some(b"before".to_vec()));
    client.put(b"k", b"after").await.expect("put");
    assert_eq!(client.get(b"k").await.expect("get"), Some(b"after".to_vec()));
    assert_eq!(client.ranges()[0].leader, Some(new));
    assert!(client.stats().not_leader >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_share_one_client() {
    let cluster = Cluster::start("client-concurrent", 3, 4).await;
    let client = Client::connect(&cluster.addrs, ClientOptions::insecure()).await.expect("connect");
    const CALLERS: u64 = 256;
    const OPS: u64 = 8;
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..OPS {
                    let k = key(c * 1_000 + i);
                    let v = format!("{c}-{i}").into_bytes();
                    client.put(&k, &v).await.expect("put");
                    assert_eq!(client.get(&k).await.expect("get"), Some(v));
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    let stats = client.stats();
    assert_eq!(stats.operations, CALLERS * OPS * 2);
    assert!(stats.connects <= 3, "one connection per node, shared by every caller: {stats:?}");
    for node in &cluster.nodes {
        assert!(node.clients_connected() <= 1);
    }
    eprintln!("{} operations by {CALLERS} callers in {:?}: {stats:?}", stats.operations, started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cluster_id_is_refused_clearly() {
    let cluster = Cluster::start("client-cluster-id", 1, 1).await;
    let started = Instant::now();
    let result = Client::connect(&cluster.addrs, ClientOptions::insecure().cluster_id("not-this-one")).await;
    match result {
        Err(ClientError::ClusterMismatch(reason)) => {
            assert!(reason.contains("\"flotilla\"") && reason.contains("not-this-one"), "{reason}")
        }
        other => panic!("expected a cluster mismatch, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after retries");
    assert_eq!(cluster.nodes[0].clients_connected(), 0);
    // The right id works.
    let client = Client::connect(&cluster.addrs, ClientOptions::insecure()).await.expect("connect");
    client.put(b"k", b"v").await.expect("put");
}
