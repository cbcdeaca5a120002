//! Real nodes inside the test process: `Node::start` on 127.0.0.1 with real redb files, real
//! QUIC and the real multi-Raft host; only the process boundary is missing.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::node::{Node, NodeConfig};
use flotilla_engine::raft::NodeId;
use flotilla_engine::store::StoreConfig;
use flotilla_engine::transport::TlsMode;
use tokio::time::Instant;

pub const CLUSTER_ID: &str = "flotilla";

pub struct Cluster {
    pub nodes: Vec<Arc<Node>>,
    pub addrs: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

/// `n` consecutive free UDP ports on 127.0.0.1, starting from a base derived from `name` and
/// the process id, below the ephemeral range (where outgoing sockets would take ports from us).
/// A port is handed out once per process: the tests of one binary run in parallel, and two of
/// them could otherwise both find a port free before either binds it.
fn free_ports(name: &str, n: usize) -> Vec<SocketAddr> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let h = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let mut base = 20_000 + ((h ^ std::process::id()) % 2_000) as u16 * 5;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let ports: Vec<u16> = (0..n as u16).map(|i| base + i).collect();
        let addrs: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        if ports.iter().all(|p| !handed_out.contains(p)) && addrs.iter().all(|a| UdpSocket::bind(a).is_ok()) {
            handed_out.extend(ports);
            return addrs;
        }
        base = 20_000 + (base - 20_000 + 97) % 10_000;
    }
}

impl Cluster {
    /// Starts `n` nodes sharing `ranges` initial ranges. Must run inside a multi-threaded
    /// tokio runtime.
    pub async fn start(name: &str, n: usize, ranges: u32) -> Cluster {
        Cluster::start_with(name, n, ranges, |_| {}).await
    }

    /// [`Cluster::start`] with each node's store configuration adjusted by `configure`.
    pub async fn start_with(
        name: &str,
        n: usize,
        ranges: u32,
        configure: impl Fn(&mut StoreConfig),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs = free_ports(name, n);
        let members: Vec<(NodeId, SocketAddr)> =
            addrs.iter().enumerate().map(|(i, &a)| (NodeId(i as u64 + 1), a)).collect();
        let mut nodes = Vec::new();
        for &(id, listen) in &members {
            let cfg = NodeConfig {
                id,
                data_dir: dir.path().join(format!("n{}", id.0)),
                listen,
                members: members.clone(),
                tls: TlsMode::Insecure,
                cluster_id: CLUSTER_ID.into(),
                initial_ranges: ranges,
                store: {
                    let mut store = StoreConfig::new(id);
                    configure(&mut store);
                    store
                },
                single_thread: false,
            };
            nodes.push(Arc::new(Node::start(cfg).await.expect("node starts")));
        }
        Cluster { nodes, addrs, _dir: dir }
    }

    pub fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.nodes[id.0 as usize - 1]
    }

    /// Waits until every range has a leader that every node agrees on; returns them by range.
    pub async fn wait_for_leaders(&self) -> Vec<(flotilla_engine::ids::RangeId, NodeId)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ranges = self.nodes[0].store.ranges().to_vec();
            let agreed: Option<Vec<_>> = ranges
                .iter()
                .map(|r| {
                    let leader = self.nodes[0].store.leader_of(r.id)?;
                    self.nodes
                        .iter()
                        .all(|n| n.store.leader_of(r.id) == Some(leader))
                        .then_some((r.id, leader))
                })
                .collect();
            if let Some(leaders) = agreed {
                return leaders;
            }
            assert!(Instant::now() < deadline, "no stable leaders within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
