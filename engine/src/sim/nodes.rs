//! The whole-node simulator: the real multi-Raft host (`store::Driver`), real redb storage on a
//! simulated disk that loses unsynced writes on a crash (`storage::SimDisk`), a simulated
//! network between the drivers, and per-node clocks — stepped from one seeded event queue.
//!
//! It exercises what the Raft-level simulator cannot: group commit, coalesced heartbeats,
//! quiescence and node liveness, apply in the round's transaction, restart from redb. Faults:
//! crashes (unsynced writes lost) and restarts, symmetric and one-way partitions, message drops,
//! delays and reorders, clock skew. Checks: at most one leader per term per range (continuously);
//! after healing, every range elects a leader and every replica converges (same applied index,
//! same data); every acknowledged write is present.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::checker::Violation;
use super::world::{SeedReport, Stats};
use crate::ids::RangeId;
use crate::kv::{Command, CommandResult, SetCondition};
use crate::raft::{NodeId, Role, Term};
use crate::rng::Rng;
use crate::storage::{NodeStorage, SimDisk, WalOptions};
use crate::store::{self, Driver, Input, KvError, ManualClock, ReadOp, ReadResult, StoreConfig, StoreHandle};
use crate::transport::wire::RaftBatch;

/// Wake-ups per node: the ticker's period.
const WAKE_US: u64 = 25_000;
/// After healing, ranges must converge within this much simulated time.
const CONVERGE_BOUND_US: u64 = 30_000_000;
/// How long after convergence a quiet cluster must have deleted its dead log segments.
const LOG_RECLAIM_US: u64 = 10_000_000;
const TRACE_LINES: usize = 40;

/// What to simulate at the node level.
#[derive(Clone, Debug)]
pub struct NodeSimOptions {
    pub nodes: usize,
    pub ranges: u32,
    pub steps: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Wake { node: usize, incarnation: u64 },
    Deliver { batch: u64 },
    Client,
    Fault,
    Restart { node: usize },
    HealLinks { generation: u64 },
}

struct Slot {
    id: NodeId,
    disk: SimDisk,
    clock: Arc<ManualClock>,
    /// Clock rate in per mille of real time.
    rate_permille: u64,
    incarnation: u64,
    running: Option<(StoreHandle, Driver)>,
    outbox: Arc<Mutex<Vec<RaftBatch>>>,
}

struct PendingWrite {
    key: Vec<u8>,
    value: Vec<u8>,
    node: NodeId,
    reply: oneshot::Receiver<Result<CommandResult, KvError>>,
}

/// A read of a key whose (only) write was acknowledged before the read began: linearizability
/// demands it sees that value.
struct PendingRead {
    key: Vec<u8>,
    expected: Vec<u8>,
    reply: oneshot::Receiver<Result<ReadResult, KvError>>,
}

struct NodeWorld {
    opts: NodeSimOptions,
    rng: Rng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    in_flight: BTreeMap<u64, RaftBatch>,
    next_batch: u64,
    slots: Vec<Slot>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    links_generation: u64,
    drop_per_million: u32,
    pending: Vec<PendingWrite>,
    reads: Vec<PendingRead>,
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    next_key: u64,
    leaders: BTreeMap<(RangeId, Term), NodeId>,
    clients_on: bool,
    stats: Stats,
    trace: VecDeque<String>,
    violation: Option<Violation>,
}

/// Runs one seed of the whole-node simulation.
pub fn run_node_seed(seed: u64, opts: &NodeSimOptions) -> SeedReport {
    super::report_panics(seed, || NodeWorld::new(seed, opts.clone()).run(seed))
}

impl NodeWorld {
    fn new(seed: u64, opts: NodeSimOptions) -> NodeWorld {
        let mut rng = Rng::new(seed);
        let slots = (1..=opts.nodes as u64)
            .map(|id| Slot {
                id: NodeId(id),
                disk: SimDisk::new(),
                clock: Arc::new(ManualClock::default()),
                rate_permille: rng.range_inclusive(980, 1020),
                incarnation: 0,
                running: None,
                outbox: Arc::new(Mutex::new(Vec::new())),
            })
            .collect();
        let mut world = NodeWorld {
            opts,
            rng,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            next_batch: 0,
            slots,
            blocked: BTreeSet::new(),
            links_generation: 0,
            drop_per_million: 0,
            pending: Vec::new(),
            reads: Vec::new(),
            acked: BTreeMap::new(),
            next_key: 0,
            leaders: BTreeMap::new(),
            clients_on: true,
            stats: Stats::default(),
            trace: VecDeque::new(),
            violation: None,
        };
        for k in 0..world.slots.len() {
            world.start(k);
        }
        world.schedule(200_000, Event::Client);
        world.schedule(500_000, Event::Fault);
        world
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now_us + delay_us, self.seq, event)));
    }

    fn note(&mut self, line: String) {
        if std::env::var_os("FLOTILLA_SIM_TRACE_ACKS").is_some() {
            eprintln!("{:>9.3} ms  {line}", self.now_us as f64 / 1000.0);
        }
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9.3} ms  {line}", self.now_us as f64 / 1000.0));
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {invariant}: {detail}"));
            self.violation = Some(Violation { invariant, detail });
        }
    }

    fn store_config(id: NodeId) -> StoreConfig {
        let mut cfg = StoreConfig::new(id);
        cfg.log_retain_entries = 20;
        // Tiny chunks, so that snapshots span many batches and chunk loss and reordering
        // across reconnects are exercised.
        cfg.snapshot_chunk_bytes = 96;
        cfg.snapshot_chunks_per_round = 3;
        // Frequent checkpoints, so that crashes land on every side of one: sliced (a third of
        // the ranges every 40 ms), and whole ones when the writes pile up.
        cfg.checkpoint_interval = std::time::Duration::from_millis(120);
        cfg.checkpoint_slices = 3;
        cfg.checkpoint_bytes_max = 6_000;
        cfg.log_segments_max = 3;
        cfg
    }

    fn start(&mut self, k: usize) {
        let slot = &mut self.slots[k];
        // Tiny log segments, so that segments fill, roll and get deleted all the time.
        let wal = WalOptions { segment_bytes: 2_048, prealloc_bytes: 512 };
        let storage = match NodeStorage::on_sim_disk(&slot.disk, wal) {
            Ok(s) => s,
            Err(e) => {
                let detail = format!("{} cannot reopen its storage: {e}", slot.id);
                self.fail("recovery", detail);
                return;
            }
        };
        let members: Vec<NodeId> = (1..=self.opts.nodes as u64).map(NodeId).collect();
        let bootstrap = store::initial_ranges(self.opts.ranges, &members);
        let peers = members.iter().copied().filter(|&p| p != slot.id).collect();
        let outbox = slot.outbox.clone();
        let send: store::BatchSender = Arc::new(move |batch| {
            if let Ok(mut o) = outbox.lock() {
                o.push(batch);
            }
        });
        slot.clock.set(Duration::from_micros(self.now_us * slot.rate_permille / 1000));
        match store::build(Self::store_config(slot.id), storage, &bootstrap, peers, send, slot.clock.clone())
        {
            Ok(running) => {
                slot.running = Some(running);
                slot.incarnation += 1;
                let (id, incarnation) = (slot.id, slot.incarnation);
                let first = self.rng.range_inclusive(1, WAKE_US);
                self.schedule(first, Event::Wake { node: k, incarnation });
                if self.now_us > 0 {
                    self.note(format!("{id} restarted"));
                }
            }
            Err(e) => {
                let detail = format!("{} cannot restart: {e}", slot.id);
                self.fail("recovery", detail);
            }
        }
    }

    fn crash(&mut self, k: usize) {
        let slot = &mut self.slots[k];
        if slot.running.is_none() {
            return;
        }
        // Detach the disk first: the dying process's database must not write (or sync) on its
        // way down.
        slot.disk = slot.disk.crash();
        drop(slot.running.take());
        slot.incarnation += 1;
        if let Ok(mut o) = slot.outbox.lock() {
            o.clear();
        }
        self.stats.crashes += 1;
        let id = slot.id;
        self.note(format!("{id} crashed (unsynced writes lost)"));
    }

    /// Steps node `k` with `inputs`, then ships its outbox and checks what it reports.
    fn step(&mut self, k: usize, inputs: Vec<Input>) {
        let now = self.now_us;
        let slot = &mut self.slots[k];
        let Some((_, driver)) = slot.running.as_mut() else { return };
        slot.clock.set(Duration::from_micros(now * slot.rate_permille / 1000));
        // Now and then the process dies inside the round, at its fsync — after the round's
        // early messages may have left, before anything in it is durable.
        if self.rng.chance(2_000) {
            slot.disk.arm_crash_on_sync(self.rng.range_inclusive(0, 2) as u32);
        }
        if let Err(e) = driver.step(inputs) {
            if slot.disk.detached() {
                slot.disk = slot.disk.reattach();
                drop(slot.running.take());
                slot.incarnation += 1;
                let id = slot.id;
                self.stats.crashes += 1;
                self.note(format!("{id} crashed during an fsync"));
                let downtime = self.rng.range_inclusive(10_000, 1_000_000);
                self.schedule(downtime, Event::Restart { node: k });
                // What the round sent before its fsync has left the node: deliver it.
                let slot = &self.slots[k];
                let sent: Vec<RaftBatch> =
                    slot.outbox.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
                self.ship(sent);
                return;
            }
            let detail = format!("{}: {e}", slot.id);
            self.fail("storage", detail);
            return;
        }
        let id = slot.id;
        let states = driver.group_states();
        let batches: Vec<RaftBatch> =
            slot.outbox.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
        for state in states {
            if state.role == Role::Leader {
                match self.leaders.insert((state.range, state.term), id) {
                    Some(other) if other != id => {
                        let detail =
                            format!("{} has two leaders in {}: {other} and {id}", state.range, state.term);
                        self.fail("election safety", detail);
                    }
                    None => {
                        self.stats.elections += 1;
                        self.note(format!("{id} leads {} in {}", state.range, state.term));
                    }
                    _ => {}
                }
            }
        }
        self.ship(batches);
        self.collect_replies();
    }

    /// Puts batches on the simulated network.
    fn ship(&mut self, batches: Vec<RaftBatch>) {
        for batch in batches {
            self.stats.messages += 1;
            self.stats.snapshots += batch.snapshot_chunks.iter().filter(|c| c.offset == 0).count() as u64;
            if self.blocked.contains(&(batch.from, batch.to)) || self.rng.chance(self.drop_per_million) {
                continue;
            }
            let delay = self.rng.range_inclusive(100, 3_000);
            let key = self.next_batch;
            self.next_batch += 1;
            self.in_flight.insert(key, batch);
            self.schedule(delay, Event::Deliver { batch: key });
        }
    }

    fn collect_replies(&mut self) {
        let mut acked = Vec::new();
        let mut trace = Vec::new();
        self.pending.retain_mut(|w| match w.reply.try_recv() {
            Ok(Ok(CommandResult::Written(true))) => {
                acked.push((w.key.clone(), w.value.clone()));
                trace.push(format!("{} acked {}", w.node, String::from_utf8_lossy(&w.key)));
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            _ => false,
        });
        if std::env::var_os("FLOTILLA_SIM_TRACE_ACKS").is_some() {
            for line in trace {
                self.note(line);
            }
        }
        self.stats.commits += acked.len() as u64;
        self.acked.extend(acked);
        let mut stale = None;
        let mut served = 0;
        self.reads.retain_mut(|r| match r.reply.try_recv() {
            Ok(Ok(ReadResult::Value(v))) => {
                served += 1;
                if v.as_deref() != Some(r.expected.as_slice()) {
                    stale = Some((r.key.clone(), r.expected.clone(), v));
                }
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            _ => false,
        });
        self.stats.reads += served;
        if let Some((key, expected, got)) = stale {
            let detail = format!(
                "read of {} returned {:?} after the write of {} was acknowledged",
                String::from_utf8_lossy(&key),
                got.map(|g| String::from_utf8_lossy(&g).into_owned()),
                String::from_utf8_lossy(&expected)
            );
            self.fail("linearizable read", detail);
        }
    }

    fn run(mut self, seed: u64) -> SeedReport {
        let mut steps = 0;
        while steps < self.opts.steps && self.violation.is_none() {
            if !self.next_event() {
                break;
            }
            steps += 1;
        }
        if self.violation.is_none() {
            self.heal_and_check();
        }
        SeedReport {
            seed,
            sim_time_us: self.now_us,
            trace: if self.violation.is_some() { self.trace.iter().cloned().collect() } else { Vec::new() },
            violation: self.violation,
            stats: self.stats,
        }
    }

    fn next_event(&mut self) -> bool {
        let Some(Reverse((time, _, event))) = self.queue.pop() else { return false };
        self.now_us = time;
        match event {
            Event::Wake { node, incarnation } => {
                if self.slots[node].incarnation == incarnation && self.slots[node].running.is_some() {
                    self.step(node, vec![Input::Tick]);
                    self.schedule(WAKE_US, Event::Wake { node, incarnation });
                }
            }
            Event::Deliver { batch } => {
                if let Some(batch) = self.in_flight.remove(&batch) {
                    let k = (batch.to.0 - 1) as usize;
                    if !self.blocked.contains(&(batch.from, batch.to)) {
                        self.step(k, vec![Input::Batch(batch)]);
                    }
                }
            }
            Event::Client => self.on_client(),
            Event::Fault => self.on_fault(),
            Event::Restart { node } => {
                if self.slots[node].running.is_none() {
                    self.start(node);
                }
            }
            Event::HealLinks { generation } => {
                if generation == self.links_generation && !self.blocked.is_empty() {
                    self.blocked.clear();
                    self.note("links healed".into());
                }
            }
        }
        true
    }

    fn on_client(&mut self) {
        if !self.clients_on {
            return;
        }
        let next = self.rng.range_inclusive(2_000, 10_000);
        self.schedule(next, Event::Client);
        let up: Vec<usize> = (0..self.slots.len()).filter(|&k| self.slots[k].running.is_some()).collect();
        let Some(&k) = self.rng.pick(&up) else { return };
        if !self.acked.is_empty() && self.rng.chance(300_000) {
            self.issue_read(k);
            return;
        }
        self.next_key += 1;
        // Keys spread over every range: the first byte walks the printable span.
        let key =
            format!("{}k{:06}", (b'!' + (self.next_key % 90) as u8) as char, self.next_key).into_bytes();
        let value = format!("v{}", self.next_key).into_bytes();
        let Some((range, target)) = self.route(k, &key) else { return };
        let (reply, rx) = oneshot::channel();
        let command =
            Command::Put { key: key.clone(), value: value.clone(), condition: SetCondition::Always };
        let node = self.slots[target].id;
        if std::env::var_os("FLOTILLA_SIM_TRACE_ACKS").is_some() {
            let key = String::from_utf8_lossy(&key);
            eprintln!("{:>9.3} ms  {node} proposes {key} on {range}", self.now_us as f64 / 1000.0);
        }
        self.pending.push(PendingWrite { key, value, node, reply: rx });
        self.step(target, vec![Input::Propose { range, command, reply }]);
    }

    /// The range of `key` and the node to send it to: the one node `k` believes leads the
    /// range if that node is up (the router's job in production), else `k` itself.
    fn route(&self, k: usize, key: &[u8]) -> Option<(RangeId, usize)> {
        let (handle, driver) = self.slots[k].running.as_ref()?;
        let range = handle.range_for(key)?.id;
        let leader = driver.group_states().into_iter().find(|g| g.range == range).and_then(|g| g.leader);
        let target = match leader {
            Some(l) if self.slots[(l.0 - 1) as usize].running.is_some() => (l.0 - 1) as usize,
            _ => k,
        };
        Some((range, target))
    }

    /// Reads a random acknowledged key at the node `k` believes leads its range.
    fn issue_read(&mut self, k: usize) {
        let pick = self.rng.below(self.acked.len() as u64) as usize;
        let Some((key, expected)) = self.acked.iter().nth(pick).map(|(k, v)| (k.clone(), v.clone())) else {
            return;
        };
        let Some((range, target)) = self.route(k, &key) else { return };
        let (reply, rx) = oneshot::channel();
        self.reads.push(PendingRead { key: key.clone(), expected, reply: rx });
        self.step(target, vec![Input::Read { range, op: ReadOp::Get { key }, reply }]);
    }

    fn on_fault(&mut self) {
        let next = self.rng.range_inclusive(100_000, 600_000);
        self.schedule(next, Event::Fault);
        let n = self.slots.len();
        match self.rng.below(10) {
            0..=3 => {
                let k = self.rng.below(n as u64) as usize;
                self.crash(k);
                let downtime = self.rng.range_inclusive(10_000, 2_000_000);
                self.schedule(downtime, Event::Restart { node: k });
            }
            4..=5 => {
                let k = self.rng.below(n as u64) as usize;
                let id = self.slots[k].id;
                let mut links = BTreeSet::new();
                for other in &self.slots {
                    if other.id != id {
                        links.insert((id, other.id));
                        links.insert((other.id, id));
                    }
                }
                self.block(links, format!("partition: {id} isolated"));
            }
            6 => {
                let a = NodeId(self.rng.below(n as u64) + 1);
                let b = NodeId(self.rng.below(n as u64) + 1);
                if a != b {
                    self.block([(a, b)].into_iter().collect(), format!("one-way partition: {a}→{b} dropped"));
                }
            }
            7 => {
                self.drop_per_million = self.rng.range_inclusive(0, 200_000) as u32;
                let per_mille = self.drop_per_million / 1000;
                self.note(format!("network drops {per_mille}‰"));
            }
            _ => {}
        }
    }

    fn block(&mut self, links: BTreeSet<(NodeId, NodeId)>, what: String) {
        self.blocked = links;
        self.links_generation += 1;
        self.stats.partitions += 1;
        self.note(what);
        let duration = self.rng.range_inclusive(200_000, 3_000_000);
        let generation = self.links_generation;
        self.schedule(duration, Event::HealLinks { generation });
    }

    fn heal_and_check(&mut self) {
        self.note("all faults healed; clients stop".into());
        self.clients_on = false;
        self.blocked.clear();
        self.links_generation += 1;
        self.drop_per_million = 0;
        self.queue
            .retain(|Reverse((_, _, e))| !matches!(e, Event::Fault | Event::Restart { .. } | Event::Client));
        for k in 0..self.slots.len() {
            if self.slots[k].running.is_none() {
                self.start(k);
            }
        }
        let deadline = self.now_us + CONVERGE_BOUND_US;
        while self.violation.is_none() && !self.converged() {
            if self.now_us > deadline || !self.next_event() {
                let detail = format!(
                    "ranges did not elect and converge within {} s of healing: {}",
                    CONVERGE_BOUND_US / 1_000_000,
                    self.describe()
                );
                self.fail("convergence", detail);
                return;
            }
        }
        self.check_data();
        self.check_log_space();
    }

    /// Log space comes back: with the clients stopped and the faults healed, every node's log
    /// gets down to `log_segments_max` segment files within `LOG_RECLAIM_US` — dead segments
    /// deleted, and groups that kept the oldest one alive compacted. (Polled: a node that
    /// crashes at an fsync meanwhile needs to catch up first.)
    fn check_log_space(&mut self) {
        let deadline = self.now_us + LOG_RECLAIM_US;
        let bound = Self::store_config(NodeId(1)).log_segments_max;
        loop {
            // (node, bytes of records, segment files, the groups that keep the oldest)
            let over: Vec<(NodeId, u64, usize, Vec<RangeId>)> = self
                .slots
                .iter()
                .filter_map(|s| s.running.as_ref().map(|(_, d)| (s.id, d.storage())))
                .filter_map(|(id, storage)| {
                    let (bytes, segments) = storage.log_size();
                    (segments > bound).then(|| (id, bytes, segments, storage.groups_pinning_log(0)))
                })
                .collect();
            if over.is_empty() || self.violation.is_some() {
                return;
            }
            if self.now_us > deadline || !self.next_event() {
                let detail = format!(
                    "log segments (node, bytes of records, files, groups keeping the oldest) still \
                     above {bound} {} ms after the clients stopped: {over:?}",
                    LOG_RECLAIM_US / 1000
                );
                self.fail("log space", detail);
                return;
            }
        }
    }

    /// Every range has a leader that has committed its whole log, and every voter has applied
    /// the leader's commit index.
    ///
    /// "Its whole log" matters: a new leader learns that entries of earlier terms are
    /// committed only when an entry of its own term commits. Until then its commit index may
    /// lag entries that are already durable on a quorum, and acknowledged — every replica can
    /// agree on that lagging index while the acknowledged write is not applied yet anywhere.
    /// (Checking then reported a lost write that was not lost: the leader-appends-early
    /// optimization was withdrawn for it in session 1; seed 153 with early appends.)
    fn converged(&self) -> bool {
        let states: Vec<Vec<store::GroupState>> = self
            .slots
            .iter()
            .map(|s| s.running.as_ref().map(|(_, d)| d.group_states()).unwrap_or_default())
            .collect();
        let Some(first) = states.first() else { return false };
        first.iter().all(|g| {
            let leader = states.iter().flatten().find(|x| x.range == g.range && x.role == Role::Leader);
            let Some(leader) = leader else { return false };
            if leader.commit != leader.last_index {
                return false;
            }
            leader.voters.iter().all(|v| {
                states
                    .get((v.0 - 1) as usize)
                    .and_then(|s| s.iter().find(|x| x.range == g.range))
                    .is_some_and(|x| x.applied == leader.commit && x.term == leader.term)
            })
        })
    }

    fn describe(&self) -> String {
        let mut out = Vec::new();
        for slot in &self.slots {
            if let Some((_, d)) = &slot.running {
                for g in d.group_states() {
                    out.push(format!(
                        "{}:{}:{:?}@{} c{} a{} {}",
                        slot.id, g.range, g.role, g.term, g.commit.0, g.applied.0, g.progress
                    ));
                }
            }
        }
        out.join(" ")
    }

    /// Same data on every replica of every range; every acknowledged write present.
    fn check_data(&mut self) {
        let Some((handle, _)) = self.slots[0].running.as_ref() else { return };
        let ranges = handle.ranges().to_vec();
        for r in &ranges {
            let mut copies = Vec::new();
            for slot in &self.slots {
                if let Some((_, d)) = &slot.running {
                    match d.storage().scan(&r.start, &r.end, usize::MAX) {
                        Ok(pairs) => copies.push((slot.id, pairs)),
                        Err(e) => {
                            let detail = format!("{} cannot scan {}: {e}", slot.id, r.id);
                            self.fail("storage", detail);
                            return;
                        }
                    }
                }
            }
            if let Some((first_id, first)) = copies.first() {
                for (id, pairs) in &copies[1..] {
                    if pairs != first {
                        let detail = format!(
                            "{} differs between {first_id} ({} keys) and {id} ({} keys)",
                            r.id,
                            first.len(),
                            pairs.len()
                        );
                        self.fail("replica convergence", detail);
                        return;
                    }
                }
            }
        }
        let Some((_, driver)) = self.slots[0].running.as_ref() else { return };
        let storage = driver.storage().clone();
        for (key, value) in &self.acked {
            match storage.get(key) {
                Ok(Some(v)) if &v == value => {}
                other => {
                    let detail = format!(
                        "acknowledged write {} = {} reads back as {other:?}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(value)
                    );
                    self.fail("acknowledged write lost", detail);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 153 once reported an acknowledged write as lost when leaders send appends before
    /// their own fsync: a new leader had not yet committed an entry of its own term, so every
    /// replica agreed on a commit index below the acknowledged (and durable) entry. The
    /// convergence check now waits for leaders to commit their whole log.
    #[test]
    fn seed_153_early_appends_lose_nothing() {
        let report = run_node_seed(153, &NodeSimOptions { nodes: 3, ranges: 4, steps: 20_000 });
        assert!(report.violation.is_none(), "{:?}\n{}", report.violation, report.trace.join("\n"));
        assert!(
            report.stats.crashes > 10 && report.stats.commits > 100,
            "the seed did little: {:?}",
            report.stats
        );
    }
}
