//! An in-memory transport: nodes joined to one [`MemHub`] exchange batches through channels.
//!
//! For unit tests of the host (and anything else that wants a network without sockets). It keeps
//! the [`Transport`] contract and nothing more generous: batches go straight into the receiver's
//! bounded inbound channel and are dropped if it is full, if the link is cut, if the receiver is
//! not joined, or by the hub's seeded random drop. Faults are directed (`cut(a, b)` stops a → b
//! only) so asymmetric partitions can be tested.
//!
//! Invariants:
//! - Per (sender, receiver) pair, delivery order is send order: `send` puts the batch into the
//!   receiver's channel synchronously, under the hub lock.
//! - Random drops are a pure function of the hub's seed and the sequence of sends, so a
//!   single-threaded test replays exactly.
//! - The hub lock is never held across an `.await` (requests clone the handler, then release).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{RaftBatch, RequestHandler, Transport, TransportError};
use crate::raft::NodeId;
use crate::rng::Rng;

/// A network of in-memory nodes.
#[derive(Clone, Debug)]
pub struct MemHub {
    state: Arc<Mutex<HubState>>,
}

struct HubState {
    nodes: BTreeMap<NodeId, MemNode>,
    /// Directed links that are down: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability, per million, that a batch is dropped even on a healthy link.
    drop_per_million: u32,
    rng: Rng,
    batches_dropped: u64,
}

impl std::fmt::Debug for HubState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubState")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("cut", &self.cut)
            .field("drop_per_million", &self.drop_per_million)
            .field("batches_dropped", &self.batches_dropped)
            .finish()
    }
}

struct MemNode {
    inbound: mpsc::Sender<RaftBatch>,
    handler: Arc<dyn RequestHandler>,
}

impl MemHub {
    /// A hub with no faults; `seed` drives the random drops set by
    /// [`set_drop_per_million`](Self::set_drop_per_million).
    pub fn new(seed: u64) -> MemHub {
        MemHub {
            state: Arc::new(Mutex::new(HubState {
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                drop_per_million: 0,
                rng: Rng::new(seed),
                batches_dropped: 0,
            })),
        }
    }

    /// Attaches `node`; replaces an earlier attachment of the same id (a restart).
    pub fn join(
        &self,
        node: NodeId,
        inbound: mpsc::Sender<RaftBatch>,
        handler: Arc<dyn RequestHandler>,
    ) -> MemTransport {
        self.lock().nodes.insert(node, MemNode { inbound, handler });
        MemTransport { node, hub: self.clone() }
    }

    /// Detaches `node` (a crash): batches to it are dropped, requests to it are unreachable.
    pub fn leave(&self, node: NodeId) {
        self.lock().nodes.remove(&node);
    }

    pub fn set_drop_per_million(&self, drop_per_million: u32) {
        self.lock().drop_per_million = drop_per_million.min(1_000_000);
    }

    /// Stops traffic from `from` to `to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Restores traffic from `from` to `to`.
    pub fn heal(&self, from: NodeId, to: NodeId) {
        self.lock().cut.remove(&(from, to));
    }

    /// Cuts every link to and from `node`, among the nodes joined now.
    pub fn isolate(&self, node: NodeId) {
        let mut state = self.lock();
        let others: Vec<NodeId> = state.nodes.keys().copied().filter(|n| *n != node).collect();
        for other in others {
            state.cut.insert((node, other));
            state.cut.insert((other, node));
        }
    }

    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// Batches dropped so far, for any reason.
    pub fn batches_dropped(&self) -> u64 {
        self.lock().batches_dropped
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding this lock can only come from a bug in this file; the state is
        // plain data and stays consistent, so keep going rather than poison every test after.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One node's handle on a [`MemHub`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    node: NodeId,
    hub: MemHub,
}

impl MemTransport {
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn hub(&self) -> &MemHub {
        &self.hub
    }
}

impl Transport for MemTransport {
    fn send(&self, batch: RaftBatch) {
        let mut state = self.hub.lock();
        let state = &mut *state;
        let delivered = batch.from == self.node
            && !state.cut.contains(&(self.node, batch.to))
            && !state.rng.chance(state.drop_per_million)
            && state.nodes.get(&batch.to).is_some_and(|node| node.inbound.try_send(batch).is_ok());
        if !delivered {
            state.batches_dropped += 1;
        }
    }

    fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send {
        let from = self.node;
        let handler = {
            let state = self.hub.lock();
            if state.cut.contains(&(from, to)) || state.cut.contains(&(to, from)) {
                Err("link cut")
            } else {
                state.nodes.get(&to).map(|node| Arc::clone(&node.handler)).ok_or("node not joined")
            }
        };
        async move {
            let handler = handler
                .map_err(|reason| TransportError::Unreachable { peer: to, reason: reason.to_string() })?;
            tokio::time::timeout(timeout, handler.handle(from, payload))
                .await
                .map_err(|_| TransportError::Timeout { peer: to, timeout })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RangeId;
    use crate::raft::Term;
    use crate::transport::handler_fn;

    fn batch(from: u64, to: u64, seq: u64) -> RaftBatch {
        RaftBatch {
            from: NodeId(from),
            to: NodeId(to),
            quiesce: vec![(RangeId(seq), Term(1))],
            ..RaftBatch::default()
        }
    }

    fn echo() -> Arc<dyn RequestHandler> {
        handler_fn(|from: NodeId, payload: Vec<u8>| async move {
            let mut out = from.to_string().into_bytes();
            out.extend(payload);
            out
        })
    }

    #[tokio::test]
    async fn batches_arrive_in_order_and_cuts_are_directed() {
        let hub = MemHub::new(1);
        let (tx1, mut rx1) = mpsc::channel(16);
        let (tx2, mut rx2) = mpsc::channel(16);
        let t1 = hub.join(NodeId(1), tx1, echo());
        let t2 = hub.join(NodeId(2), tx2, echo());
        for seq in 0..5 {
            t1.send(batch(1, 2, seq));
        }
        for seq in 0..5 {
            assert_eq!(rx2.recv().await, Some(batch(1, 2, seq)));
        }
        hub.cut(NodeId(1), NodeId(2));
        t1.send(batch(1, 2, 99));
        t2.send(batch(2, 1, 7));
        assert_eq!(rx1.recv().await, Some(batch(2, 1, 7)));
        assert!(rx2.try_recv().is_err());
        assert_eq!(hub.batches_dropped(), 1);
    }

    #[tokio::test]
    async fn full_inbound_queue_drops_instead_of_blocking() {
        let hub = MemHub::new(1);
        let (tx, mut rx) = mpsc::channel(2);
        let (tx1, _rx1) = mpsc::channel(2);
        let t1 = hub.join(NodeId(1), tx1, echo());
        hub.join(NodeId(2), tx, echo());
        for seq in 0..5 {
            t1.send(batch(1, 2, seq));
        }
        assert_eq!(hub.batches_dropped(), 3);
        assert_eq!(rx.recv().await, Some(batch(1, 2, 0)));
        assert_eq!(rx.recv().await, Some(batch(1, 2, 1)));
    }

    #[tokio::test]
    async fn random_drops_replay_from_the_seed() {
        let run = |seed| {
            let hub = MemHub::new(seed);
            hub.set_drop_per_million(500_000);
            let (tx, mut rx) = mpsc::channel(1024);
            let (tx1, _rx1) = mpsc::channel(1);
            let t1 = hub.join(NodeId(1), tx1, echo());
            hub.join(NodeId(2), tx, echo());
            for seq in 0..200 {
                t1.send(batch(1, 2, seq));
            }
            let mut got = Vec::new();
            while let Ok(b) = rx.try_recv() {
                got.push(b.quiesce[0].0 .0);
            }
            got
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.len() > 50 && a.len() < 150, "about half dropped, got {}", a.len());
        assert!(a.windows(2).all(|w| w[0] < w[1]), "order kept");
    }

    #[tokio::test]
    async fn requests_reach_the_handler_or_fail_clearly() {
        let hub = MemHub::new(1);
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        let t1 = hub.join(NodeId(1), tx1, echo());
        hub.join(NodeId(2), tx2, echo());
        let answer = t1.request(NodeId(2), b"ping".to_vec(), Duration::from_secs(5)).await.expect("answer");
        assert_eq!(answer, b"n1ping");
        assert!(matches!(
            t1.request(NodeId(3), vec![], Duration::from_secs(5)).await,
            Err(TransportError::Unreachable { .. })
        ));
        hub.isolate(NodeId(2));
        assert!(matches!(
            t1.request(NodeId(2), vec![], Duration::from_secs(5)).await,
            Err(TransportError::Unreachable { .. })
        ));
        hub.heal_all();
        let (tx3, _rx3) = mpsc::channel(1);
        hub.join(
            NodeId(3),
            tx3,
            handler_fn(|_, _| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Vec::new()
            }),
        );
        assert!(matches!(
            t1.request(NodeId(3), vec![], Duration::from_millis(20)).await,
            Err(TransportError::Timeout { .. })
        ));
    }
}
