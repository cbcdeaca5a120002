//! The simulated world: nodes hosting replicas of one or more groups, a durable store per
//! replica, a faulty network, skewed clocks, clients, and a fault schedule — all driven by one
//! seeded event queue, so a seed replays exactly.
//!
//! Each node plays the host's part of the `RawNode` contract (see `raft/node.rs`): after every
//! input it persists the ready state, then sends, then applies, then advances. A crash throws
//! away everything volatile (the `RawNode`, the state machine, pending reads) and keeps only
//! what was persisted; a restart rebuilds the replica from that.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use super::checker::{GroupChecker, Violation};
use crate::raft::{
    ConfChange, ConfChangeKind, Config, Entry, EntryPayload, HardState, InitialState, LogIndex, Membership,
    Message, NodeId, PlantedBug, RawNode, ReadMode, Role, Snapshot, Term,
};
use crate::rng::Rng;

/// Nominal tick length; each node's real tick interval is this times its skew factor.
const TICK_US: u64 = 10_000;
const ELECTION_TICKS: u32 = 10;
const HEARTBEAT_TICKS: u32 = 2;
/// Clock-rate skew between nodes: each tick interval is within ±this (per mille) of nominal.
const SKEW_PERMILLE: u64 = 200;
/// After the faults heal, a leader must commit a new proposal in every group within this.
const LIVENESS_BOUND_US: u64 = 10_000_000;
const TRACE_LINES: usize = 40;
/// Reads that never complete (lost leadership, dropped messages) are forgotten after this.
const READ_TIMEOUT_US: u64 = 3_000_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Initial voters per group (3 or 5). Two spare nodes join through membership changes.
    pub nodes: usize,
    pub groups: usize,
    /// Events processed with faults active, before the final heal.
    pub steps: u64,
    pub planted_bug: Option<PlantedBug>,
    /// Return the trace of notable events even when no invariant broke.
    pub keep_trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { nodes: 3, groups: 1, steps: 20_000, planted_bug: None, keep_trace: false }
    }
}

/// Counts of what one seed exercised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub elections: u64,
    pub commits: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub transfers: u64,
    pub snapshots: u64,
    pub reads: u64,
    pub messages: u64,
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub stats: Stats,
    pub sim_time_us: u64,
    pub violation: Option<Violation>,
    /// The last notable events before the violation (empty when there is none).
    pub trace: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Tick { node: usize, incarnation: u64 },
    Deliver { group: usize, message: MessageKey },
    Client,
    Fault,
    Restart { node: usize },
    HealLinks { generation: u64 },
    EndNetworkTrouble { generation: u64 },
}

/// Messages live in a side table; the queue holds their keys so events stay `Ord`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
struct MessageKey(u64);

#[derive(Debug, Default)]
struct Durable {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Durable {
    fn term_at(&self, index: LogIndex) -> Option<Term> {
        let (offset, offset_term) =
            self.snapshot.as_ref().map_or((LogIndex::ZERO, Term::ZERO), |s| (s.meta.index, s.meta.term));
        if index == offset {
            return Some(offset_term);
        }
        if index < offset {
            return None;
        }
        let position = usize::try_from(index.0 - offset.0 - 1).ok()?;
        self.entries.get(position).map(|e| e.term)
    }

    fn holds(&self, index: LogIndex, term: Term) -> bool {
        self.term_at(index) == Some(term) || self.snapshot.as_ref().is_some_and(|s| s.meta.index >= index)
    }
}

/// The replicated state machine: a tiny register map plus a hash of everything applied.
#[derive(Clone, Debug, Default)]
struct StateMachine {
    applied: LogIndex,
    hash: u64,
    registers: BTreeMap<u8, u64>,
}

impl StateMachine {
    fn apply(&mut self, entry: &Entry) {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "state machine: applying {} after {}",
            entry.index,
            self.applied
        );
        if let EntryPayload::Normal(data) = &entry.payload {
            if let Some((key, value)) = decode_command(data) {
                self.registers.insert(key, value);
            }
        }
        self.applied = entry.index;
        self.hash = mix(self.hash ^ mix(entry.index.0) ^ payload_hash(&entry.payload));
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 9 * self.registers.len());
        out.extend_from_slice(&self.applied.0.to_le_bytes());
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&(self.registers.len() as u64).to_le_bytes());
        for (&k, &v) in &self.registers {
            out.push(k);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(data: &[u8]) -> Option<StateMachine> {
        let word =
            |at: usize| -> Option<u64> { Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?)) };
        let (applied, hash, count) = (word(0)?, word(8)?, word(16)?);
        let mut registers = BTreeMap::new();
        for k in 0..usize::try_from(count).ok()? {
            let at = 24 + 9 * k;
            registers.insert(*data.get(at)?, word(at + 1)?);
        }
        Some(StateMachine { applied: LogIndex(applied), hash, registers })
    }
}

fn encode_command(key: u8, value: u64) -> Vec<u8> {
    let mut out = vec![key];
    out.extend_from_slice(&value.to_le_bytes());
    out
}

fn decode_command(data: &[u8]) -> Option<(u8, u64)> {
    let key = *data.first()?;
    let value = u64::from_le_bytes(data.get(1..9)?.try_into().ok()?);
    Some((key, value))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn payload_hash(payload: &EntryPayload) -> u64 {
    match payload {
        EntryPayload::Empty => 0x0E,
        EntryPayload::Normal(data) => data
            .iter()
            .fold(0xCBF2_9CE4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)),
        EntryPayload::Membership(m) => {
            let sets = [&m.voters, &m.voters_outgoing, &m.learners, &m.learners_next];
            sets.iter()
                .enumerate()
                .fold(0x3C, |h, (k, set)| set.iter().fold(mix(h ^ k as u64), |h, id| mix(h ^ id.0)))
        }
    }
}

#[derive(Debug)]
struct PendingRead {
    c0: LogIndex,
    issued_us: u64,
    index: Option<LogIndex>,
}

/// The volatile half of a replica: lost on crash.
#[derive(Debug)]
struct Live {
    raft: RawNode,
    sm: StateMachine,
    reads: BTreeMap<u64, PendingRead>,
    /// The last commit index reported to the checker.
    reported_commit: LogIndex,
    /// Planted bug `forget-hardstate`: the hard state that was "sent before it was synced".
    unsynced_hard_state: Option<HardState>,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    up: bool,
    incarnation: u64,
    tick_interval_us: u64,
    durable: Vec<Durable>,
    live: Vec<Live>,
}

/// The network's current behaviour.
#[derive(Debug)]
struct Network {
    blocked: BTreeSet<(NodeId, NodeId)>,
    links_generation: u64,
    drop_per_million: u32,
    duplicate_per_million: u32,
    delay_min_us: u64,
    delay_max_us: u64,
    trouble_generation: u64,
}

impl Network {
    fn calm() -> Network {
        Network {
            blocked: BTreeSet::new(),
            links_generation: 0,
            drop_per_million: 0,
            duplicate_per_million: 0,
            delay_min_us: 200,
            delay_max_us: 2_000,
            trouble_generation: 0,
        }
    }
}

/// Randomized per seed so that seeds explore different batching, pipelining and compaction.
#[derive(Debug)]
struct Tuning {
    max_msg_entries: usize,
    max_inflight_msgs: usize,
    compact_every_entries: u64,
    client_interval_us: (u64, u64),
    fault_interval_us: (u64, u64),
}

pub struct World {
    opts: SimOptions,
    rng: Rng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, EventKind)>>,
    messages: BTreeMap<u64, Message>,
    next_message: u64,
    nodes: Vec<SimNode>,
    net: Network,
    tuning: Tuning,
    checkers: Vec<GroupChecker>,
    stats: Stats,
    trace: VecDeque<String>,
    next_ctx: u64,
    next_value: u64,
    healed: bool,
    /// Convergence phase: no more client operations.
    clients_stopped: bool,
    /// After the heal: per group, a proposal (index, term) made after the heal.
    liveness_probe: Vec<Option<(LogIndex, Term)>>,
    violation: Option<Violation>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now_us", &self.now_us)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Lease drift margin that is safe for the simulated clock skew: a lease of L ticks on the
/// slowest clock must end before an election timeout of E ticks (minus one tick of
/// granularity) elapses on the fastest: (L + 1) · slow ≤ (E − 1) · fast.
fn lease_drift_ticks() -> u32 {
    let slow = 1000 + SKEW_PERMILLE;
    let fast = 1000 - SKEW_PERMILLE;
    let lease = (u64::from(ELECTION_TICKS) - 1) * fast / slow - 1;
    ELECTION_TICKS - 2 - lease as u32
}

impl World {
    pub fn new(seed: u64, opts: SimOptions) -> World {
        let mut rng = Rng::new(seed);
        let tuning = Tuning {
            max_msg_entries: *rng.pick(&[1usize, 2, 4, 64]).unwrap_or(&64),
            max_inflight_msgs: *rng.pick(&[1usize, 2, 8, 64]).unwrap_or(&8),
            compact_every_entries: rng.range_inclusive(5, 60),
            client_interval_us: (1_000, rng.range_inclusive(3_000, 12_000)),
            fault_interval_us: (20_000, rng.range_inclusive(100_000, 400_000)),
        };
        let total_nodes = opts.nodes + 2;
        let groups = opts.groups.max(1);
        let mut world = World {
            rng,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            messages: BTreeMap::new(),
            next_message: 0,
            nodes: Vec::with_capacity(total_nodes),
            net: Network::calm(),
            tuning,
            checkers: (0..groups).map(|_| GroupChecker::default()).collect(),
            stats: Stats::default(),
            trace: VecDeque::new(),
            next_ctx: 1,
            next_value: 1,
            healed: false,
            clients_stopped: false,
            liveness_probe: vec![None; groups],
            violation: None,
            opts,
        };
        let initial = Membership::with_voters((1..=world.opts.nodes as u64).map(NodeId));
        for k in 0..total_nodes {
            let id = NodeId(k as u64 + 1);
            let durable = (0..groups)
                .map(|_| {
                    let mut d = Durable::default();
                    if k < world.opts.nodes {
                        let boot = InitialState::bootstrap(initial.clone());
                        d.hard_state = boot.hard_state;
                        d.entries = boot.entries;
                    }
                    d
                })
                .collect();
            world.nodes.push(SimNode {
                id,
                up: false,
                incarnation: 0,
                tick_interval_us: TICK_US,
                durable,
                live: Vec::new(),
            });
            world.start_node(k);
        }
        let first_client = world.rng.range_inclusive(0, 5_000);
        world.schedule(first_client, EventKind::Client);
        let first_fault = world.rng.range_inclusive(50_000, 300_000);
        world.schedule(first_fault, EventKind::Fault);
        world
    }

    /// Runs the chaos phase, then heals everything and checks liveness.
    pub fn run(mut self, seed: u64) -> SeedReport {
        let mut steps = 0;
        while steps < self.opts.steps && self.violation.is_none() {
            if !self.step_once() {
                break;
            }
            steps += 1;
        }
        if self.violation.is_none() {
            self.heal_all();
            let deadline = self.now_us + LIVENESS_BOUND_US;
            while self.violation.is_none() && !self.all_groups_live() {
                if self.now_us > deadline || !self.step_once() {
                    let stuck: Vec<usize> =
                        (0..self.checkers.len()).filter(|&g| !self.group_live(g)).collect();
                    for &g in &stuck {
                        for k in 0..self.nodes.len() {
                            let line = match self.nodes[k].live.get(g) {
                                Some(live) => {
                                    let st = live.raft.status();
                                    format!(
                                        "  {} g{g}: {:?} term {} vote {:?} leader {:?} commit {} applied {} last {} voters {:?} outgoing {:?} learners {:?} {}",
                                        st.id, st.role, st.term, st.vote, st.leader, st.commit, st.applied, st.last_index,
                                        st.membership.voters, st.membership.voters_outgoing, st.membership.learners,
                                        live.raft.progress_summary()
                                    )
                                }
                                None => format!("  {} down", self.nodes[k].id),
                            };
                            self.note(line);
                        }
                    }
                    self.violation = Some(Violation {
                        invariant: "liveness",
                        detail: format!(
                            "groups {stuck:?} committed no new proposal within {} ms after all faults healed",
                            LIVENESS_BOUND_US / 1000
                        ),
                    });
                }
            }
        }
        if self.violation.is_none() {
            // Convergence: with clients stopped, every member of every group catches up with
            // its leader — including members that missed appends while down or cut off.
            self.clients_stopped = true;
            let deadline = self.now_us + LIVENESS_BOUND_US;
            while self.violation.is_none() && !self.all_groups_converged() {
                if self.now_us > deadline || !self.step_once() {
                    let stuck: Vec<usize> =
                        (0..self.checkers.len()).filter(|&g| !self.group_converged(g)).collect();
                    self.violation = Some(Violation {
                        invariant: "convergence",
                        detail: format!(
                            "groups {stuck:?}: replicas did not catch up with the leader within {} ms of quiet",
                            LIVENESS_BOUND_US / 1000
                        ),
                    });
                }
            }
        }
        self.stats.elections = self.checkers.iter().map(|c| c.leaders_elected() as u64).sum();
        self.stats.commits = self.checkers.iter().map(|c| c.commit_max.0).sum();
        SeedReport {
            seed,
            sim_time_us: self.now_us,
            trace: if self.violation.is_some() || self.opts.keep_trace {
                self.trace.iter().cloned().collect()
            } else {
                Vec::new()
            },
            violation: self.violation,
            stats: self.stats,
        }
    }

    fn schedule(&mut self, delay_us: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse((self.now_us + delay_us, self.seq, kind)));
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9.3} ms  {line}", self.now_us as f64 / 1000.0));
    }

    fn fail(&mut self, v: Violation) {
        if self.violation.is_none() {
            let line = format!("VIOLATION {}: {}", v.invariant, v.detail);
            self.note(line);
            self.violation = Some(v);
        }
    }

    fn step_once(&mut self) -> bool {
        let Some(Reverse((time, _, kind))) = self.queue.pop() else {
            return false;
        };
        self.now_us = time;
        match kind {
            EventKind::Tick { node, incarnation } => self.on_tick(node, incarnation),
            EventKind::Deliver { group, message } => self.on_deliver(group, message),
            EventKind::Client => self.on_client(),
            EventKind::Fault => self.on_fault(),
            EventKind::Restart { node } => {
                if !self.nodes[node].up {
                    self.start_node(node);
                }
            }
            EventKind::HealLinks { generation } => {
                if generation == self.net.links_generation && !self.net.blocked.is_empty() {
                    self.net.blocked.clear();
                    self.note("links healed".into());
                }
            }
            EventKind::EndNetworkTrouble { generation } => {
                if generation == self.net.trouble_generation {
                    let blocked = std::mem::take(&mut self.net.blocked);
                    let links_generation = self.net.links_generation;
                    self.net = Network::calm();
                    self.net.blocked = blocked;
                    self.net.links_generation = links_generation;
                    self.net.trouble_generation = generation;
                }
            }
        }
        true
    }

    // ------------------------------------------------------------ nodes

    fn raft_config(&self, id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_ticks = ELECTION_TICKS;
        cfg.heartbeat_ticks = HEARTBEAT_TICKS;
        cfg.max_msg_entries = self.tuning.max_msg_entries;
        cfg.max_inflight_msgs = self.tuning.max_inflight_msgs;
        cfg.lease_drift_ticks = lease_drift_ticks();
        cfg.planted_bug = self.opts.planted_bug;
        cfg
    }

    /// (Re)starts a node from its durable state.
    fn start_node(&mut self, k: usize) {
        let id = self.nodes[k].id;
        let skew = self.rng.range_inclusive(1000 - SKEW_PERMILLE, 1000 + SKEW_PERMILLE);
        let mut live = Vec::new();
        for g in 0..self.checkers.len() {
            let d = &self.nodes[k].durable[g];
            let sm = d
                .snapshot
                .as_ref()
                .filter(|s| s.meta.index > LogIndex::ZERO)
                .map(|s| StateMachine::decode(&s.data).unwrap_or_default())
                .unwrap_or_default();
            let initial = InitialState {
                hard_state: d.hard_state,
                snapshot: d.snapshot.clone(),
                entries: d.entries.clone(),
                applied: sm.applied,
            };
            let seed = self.rng.next_u64();
            match RawNode::new(self.raft_config(id), initial, seed) {
                Ok(raft) => live.push(Live {
                    raft,
                    sm,
                    reads: BTreeMap::new(),
                    reported_commit: LogIndex::ZERO,
                    unsynced_hard_state: None,
                }),
                Err(e) => {
                    self.fail(Violation {
                        invariant: "recovery",
                        detail: format!("{id} group {g} cannot restart: {e}"),
                    });
                    return;
                }
            }
        }
        let node = &mut self.nodes[k];
        node.live = live;
        node.up = true;
        node.incarnation += 1;
        node.tick_interval_us = TICK_US * skew / 1000;
        let (incarnation, interval) = (node.incarnation, node.tick_interval_us);
        let first = self.rng.range_inclusive(1, interval);
        self.schedule(first, EventKind::Tick { node: k, incarnation });
        if self.now_us > 0 {
            self.note(format!("{id} restarted (tick {} us)", interval));
        }
    }

    fn crash_node(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        node.up = false;
        node.live.clear();
        node.incarnation += 1;
        self.stats.crashes += 1;
        let id = node.id;
        self.note(format!("{id} crashed"));
    }

    fn on_tick(&mut self, k: usize, incarnation: u64) {
        if !self.nodes[k].up || self.nodes[k].incarnation != incarnation {
            return;
        }
        for g in 0..self.checkers.len() {
            self.nodes[k].live[g].raft.tick();
            self.drive(k, g);
        }
        let interval = self.nodes[k].tick_interval_us;
        self.schedule(interval, EventKind::Tick { node: k, incarnation });
    }

    fn on_deliver(&mut self, g: usize, key: MessageKey) {
        let Some(m) = self.messages.remove(&key.0) else {
            return;
        };
        let k = (m.to.0 - 1) as usize;
        if !self.nodes[k].up || self.net.blocked.contains(&(m.from, m.to)) {
            return;
        }
        let kind = m.body.kind();
        let from = m.from;
        if let Err(e) = self.nodes[k].live[g].raft.step(m) {
            let detail = format!("{} rejected {kind} from {from}: {e}", self.nodes[k].id);
            self.fail(Violation { invariant: "message validity", detail });
            return;
        }
        self.drive(k, g);
    }

    /// Plays the host: persist, send, apply, advance — until the replica has no more work.
    fn drive(&mut self, k: usize, g: usize) {
        let id = self.nodes[k].id;
        let forget_hard_state = self.opts.planted_bug == Some(PlantedBug::ForgetHardState);
        while self.violation.is_none() && self.nodes[k].live[g].raft.has_ready() {
            let node = &mut self.nodes[k];
            let live = &mut node.live[g];
            let durable = &mut node.durable[g];
            let rd = live.raft.ready();

            // 1. Persist: snapshot, entries, hard state.
            if forget_hard_state {
                if let Some(hs) = live.unsynced_hard_state.take() {
                    durable.hard_state = hs;
                }
                live.unsynced_hard_state = rd.hard_state;
            } else if let Some(hs) = rd.hard_state {
                durable.hard_state = hs;
            }
            if let Some(snapshot) = &rd.snapshot {
                durable.snapshot = Some(snapshot.clone());
                durable.entries.clear();
            }
            let mut appended = Vec::with_capacity(rd.entries.len());
            if let Some(first) = rd.entries.first() {
                let offset = durable.snapshot.as_ref().map_or(LogIndex::ZERO, |s| s.meta.index);
                let keep = usize::try_from(first.index.0.saturating_sub(offset.0 + 1)).unwrap_or(usize::MAX);
                durable.entries.truncate(keep);
                for e in &rd.entries {
                    let prev_term = durable.term_at(e.index.prev()).unwrap_or(Term::ZERO);
                    appended.push((e.index, e.term, prev_term, payload_hash(&e.payload)));
                    durable.entries.push(e.clone());
                }
            }
            for (index, term, prev_term, payload) in appended {
                if let Err(v) = self.checkers[g].on_durable_entry(id, index, term, prev_term, payload) {
                    self.fail(v);
                }
            }

            // 2. Send.
            for m in rd.messages {
                self.send(g, m);
            }

            // 3. Apply.
            let node = &mut self.nodes[k];
            let live = &mut node.live[g];
            if let Some(snapshot) = &rd.snapshot {
                match StateMachine::decode(&snapshot.data) {
                    Some(sm) => live.sm = sm,
                    None => {
                        let detail = format!("{id} got an undecodable snapshot at {}", snapshot.meta.index);
                        self.fail(Violation { invariant: "snapshot", detail });
                        return;
                    }
                }
                self.stats.snapshots += 1;
                let (index, hash) = (live.sm.applied, live.sm.hash);
                if let Err(v) = self.checkers[g].on_snapshot_installed(id, index, hash) {
                    self.fail(v);
                }
                self.note(format!("{id} g{g} installed snapshot at {index}"));
            }
            for e in &rd.committed_entries {
                let live = &mut self.nodes[k].live[g];
                live.sm.apply(e);
                let hash = live.sm.hash;
                if let Err(v) = self.checkers[g].on_apply(id, e.index, e.term, payload_hash(&e.payload), hash)
                {
                    self.fail(v);
                }
            }

            // 4. Observe: commits, leadership, reads.
            self.observe_commit(k, g);
            if let Some(soft) = rd.soft_state {
                if soft.role == Role::Leader {
                    self.on_became_leader(k, g);
                }
            }
            for rs in rd.read_states {
                let live = &mut self.nodes[k].live[g];
                if let Some(read) = live.reads.get_mut(&rs.ctx) {
                    if rs.index < read.c0 {
                        let detail = format!(
                            "{id} g{g} confirmed read {} at index {} but index {} was committed before the read began",
                            rs.ctx, rs.index, read.c0
                        );
                        self.fail(Violation { invariant: "linearizable read", detail });
                        return;
                    }
                    read.index = Some(rs.index);
                }
            }
            self.nodes[k].live[g].raft.advance();
        }
        if self.violation.is_none() {
            self.serve_reads(k, g);
            self.maybe_compact(k, g);
            // The core's O(n) structural checks, in release builds too.
            self.nodes[k].live[g].raft.check_invariants();
        }
    }

    fn observe_commit(&mut self, k: usize, g: usize) {
        let id = self.nodes[k].id;
        let live = &self.nodes[k].live[g];
        let commit = live.raft.commit_index();
        if commit <= live.reported_commit {
            return;
        }
        let from = live.reported_commit.max(live.raft.snapshot_index()).next();
        let mut newly = Vec::new();
        let mut index = from;
        while index <= commit {
            if let Some(term) = live.raft.log_term(index) {
                newly.push((index, term));
            }
            index = index.next();
        }
        let is_leader = live.raft.role() == Role::Leader;
        let membership = live.raft.membership().clone();
        self.nodes[k].live[g].reported_commit = commit;
        for &(index, term) in &newly {
            if let Err(v) = self.checkers[g].on_commit(id, index, term) {
                self.fail(v);
                return;
            }
        }
        if is_leader {
            if let Some(&(index, term)) = newly.last() {
                // Durable commit: a quorum of the leader's membership must hold the entry on disk.
                let nodes = &self.nodes;
                let holds = |n: NodeId| {
                    nodes.get((n.0 - 1) as usize).is_some_and(|node| node.durable[g].holds(index, term))
                };
                if !membership.has_quorum(holds) {
                    let holders: Vec<NodeId> =
                        membership.members().into_iter().filter(|&n| holds(n)).collect();
                    let detail = format!(
                        "leader {id} g{g} committed {index}@{term} but only {holders:?} hold it durably (membership {:?} / {:?})",
                        membership.voters, membership.voters_outgoing
                    );
                    self.fail(Violation { invariant: "durable commit", detail });
                }
            }
        }
    }

    fn on_became_leader(&mut self, k: usize, g: usize) {
        let id = self.nodes[k].id;
        let raft = &self.nodes[k].live[g].raft;
        let term = raft.term();
        let snapshot_index = raft.snapshot_index();
        let mut missing = None;
        for (index, committed_term) in self.checkers[g].committed_after(snapshot_index) {
            if committed_term < term && raft.log_term(index) != Some(committed_term) {
                missing = Some((index, committed_term, raft.log_term(index)));
                break;
            }
        }
        self.note(format!("{id} g{g} became leader in {term} (last {})", raft.last_index()));
        if let Err(v) = self.checkers[g].on_leader(term, id) {
            self.fail(v);
            return;
        }
        if let Some((index, committed_term, has)) = missing {
            let detail = format!(
                "{id} g{g} leads term {term} without committed entry {index}@{committed_term} (holds {has:?})"
            );
            self.fail(Violation { invariant: "leader completeness", detail });
        }
    }

    fn serve_reads(&mut self, k: usize, g: usize) {
        let now = self.now_us;
        let live = &mut self.nodes[k].live[g];
        let applied = live.sm.applied;
        let mut served = 0;
        live.reads.retain(|_, read| match read.index {
            Some(index) if applied >= index => {
                served += 1;
                false
            }
            _ => now < read.issued_us + READ_TIMEOUT_US,
        });
        self.stats.reads += served;
    }

    fn maybe_compact(&mut self, k: usize, g: usize) {
        let live = &mut self.nodes[k].live[g];
        let applied = live.sm.applied;
        if applied.0 < live.raft.snapshot_index().0 + self.tuning.compact_every_entries {
            return;
        }
        let data = live.sm.encode();
        if let Ok(meta) = live.raft.compact(applied, data.clone()) {
            let durable = &mut self.nodes[k].durable[g];
            durable.entries.retain(|e| e.index > meta.index);
            durable.snapshot = Some(Snapshot { meta, data });
        }
    }

    // ------------------------------------------------------------ network

    fn send(&mut self, g: usize, m: Message) {
        self.stats.messages += 1;
        let to = m.to;
        if to.0 == 0 || to.0 as usize > self.nodes.len() || self.net.blocked.contains(&(m.from, to)) {
            return;
        }
        if self.rng.chance(self.net.drop_per_million) {
            return;
        }
        let copies = if self.rng.chance(self.net.duplicate_per_million) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.range_inclusive(self.net.delay_min_us, self.net.delay_max_us);
            let key = self.next_message;
            self.next_message += 1;
            self.messages.insert(key, m.clone());
            self.schedule(delay, EventKind::Deliver { group: g, message: MessageKey(key) });
        }
    }

    // ------------------------------------------------------------ clients

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&k| self.nodes[k].up).collect()
    }

    fn leader_of(&self, g: usize) -> Option<usize> {
        (0..self.nodes.len()).find(|&k| self.nodes[k].up && self.nodes[k].live[g].raft.role() == Role::Leader)
    }

    fn on_client(&mut self) {
        let (lo, hi) = self.tuning.client_interval_us;
        if self.clients_stopped {
            return;
        }
        let next = self.rng.range_inclusive(lo, hi);
        self.schedule(next, EventKind::Client);
        let g = self.rng.below(self.checkers.len() as u64) as usize;
        if self.rng.chance(650_000) || self.healed {
            // A write through whichever node currently believes it leads.
            let Some(k) = self.leader_of(g) else { return };
            let key = self.rng.below(8) as u8;
            let value = self.next_value;
            self.next_value += 1;
            let raft = &mut self.nodes[k].live[g].raft;
            if let Ok(index) = raft.propose(encode_command(key, value)) {
                let term = raft.term();
                // After the heal, remember one proposal per group to prove progress; replace it
                // if its index was committed with another leader's entry.
                let superseded = self.liveness_probe[g]
                    .is_some_and(|(i, t)| self.checkers[g].committed_term(i).is_some_and(|c| c != t));
                if self.healed && (self.liveness_probe[g].is_none() || superseded) {
                    self.liveness_probe[g] = Some((index, term));
                }
            }
            self.drive(k, g);
        } else {
            let up = self.up_nodes();
            let Some(&k) = self.rng.pick(&up) else { return };
            let mode = if self.rng.chance(500_000) { ReadMode::Lease } else { ReadMode::ReadIndex };
            let ctx = self.next_ctx;
            self.next_ctx += 1;
            let c0 = self.checkers[g].commit_max;
            let issued_us = self.now_us;
            let live = &mut self.nodes[k].live[g];
            if live.raft.read_index(ctx, mode).is_ok() {
                live.reads.insert(ctx, PendingRead { c0, issued_us, index: None });
            }
            self.drive(k, g);
        }
    }

    // ------------------------------------------------------------ faults

    fn on_fault(&mut self) {
        let (lo, hi) = self.tuning.fault_interval_us;
        let next = self.rng.range_inclusive(lo, hi);
        self.schedule(next, EventKind::Fault);
        match self.rng.below(100) {
            0..=17 => self.fault_crash(),
            18..=27 => self.fault_partition_isolate(),
            28..=35 => self.fault_partition_split(),
            36..=41 => self.fault_partition_one_way(),
            42..=49 => self.fault_lossy_network(),
            50..=67 => self.fault_membership_change(),
            68..=79 => self.fault_leader_transfer(),
            80..=87 => self.fault_isolate_leader(),
            88..=91 => self.fault_clock_skew(),
            _ => {}
        }
    }

    fn fault_crash(&mut self) {
        let up = self.up_nodes();
        // Prefer leaders sometimes: they hold the most interesting volatile state.
        let target = if self.rng.chance(400_000) {
            let g = self.rng.below(self.checkers.len() as u64) as usize;
            self.leader_of(g)
        } else {
            self.rng.pick(&up).copied()
        };
        let Some(k) = target else { return };
        self.crash_node(k);
        let downtime = if self.rng.chance(250_000) {
            self.rng.range_inclusive(0, 3_000)
        } else {
            self.rng.range_inclusive(20_000, 1_500_000)
        };
        self.schedule(downtime, EventKind::Restart { node: k });
    }

    fn block_links(&mut self, links: BTreeSet<(NodeId, NodeId)>, what: String) {
        self.net.blocked = links;
        self.net.links_generation += 1;
        self.stats.partitions += 1;
        self.note(what);
        let duration = self.rng.range_inclusive(50_000, 1_500_000);
        let generation = self.net.links_generation;
        self.schedule(duration, EventKind::HealLinks { generation });
    }

    fn isolate(&mut self, k: usize) {
        let id = self.nodes[k].id;
        let mut links = BTreeSet::new();
        for other in &self.nodes {
            if other.id != id {
                links.insert((id, other.id));
                links.insert((other.id, id));
            }
        }
        self.block_links(links, format!("partition: {id} isolated"));
    }

    fn fault_partition_isolate(&mut self) {
        let k = self.rng.below(self.nodes.len() as u64) as usize;
        self.isolate(k);
    }

    fn fault_isolate_leader(&mut self) {
        let g = self.rng.below(self.checkers.len() as u64) as usize;
        if let Some(k) = self.leader_of(g) {
            self.isolate(k);
        }
    }

    fn fault_partition_split(&mut self) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(500_000)).collect();
        let mut links = BTreeSet::new();
        for (a, &sa) in ids.iter().zip(&side) {
            for (b, &sb) in ids.iter().zip(&side) {
                if sa != sb {
                    links.insert((*a, *b));
                }
            }
        }
        let left: Vec<String> =
            ids.iter().zip(&side).filter(|(_, &s)| s).map(|(id, _)| id.to_string()).collect();
        self.block_links(links, format!("partition: [{}] split from the rest", left.join(" ")));
    }

    fn fault_partition_one_way(&mut self) {
        let n = self.nodes.len() as u64;
        let mut links = BTreeSet::new();
        for _ in 0..self.rng.range_inclusive(1, 3) {
            let a = NodeId(self.rng.below(n) + 1);
            let b = NodeId(self.rng.below(n) + 1);
            if a != b {
                links.insert((a, b));
            }
        }
        if !links.is_empty() {
            let text: Vec<String> = links.iter().map(|(a, b)| format!("{a}→{b}")).collect();
            self.block_links(links, format!("one-way partition: {} dropped", text.join(" ")));
        }
    }

    fn fault_lossy_network(&mut self) {
        self.net.drop_per_million = self.rng.range_inclusive(0, 300_000) as u32;
        self.net.duplicate_per_million = self.rng.range_inclusive(0, 200_000) as u32;
        self.net.delay_max_us = self.rng.range_inclusive(2_000, 40_000);
        self.net.trouble_generation += 1;
        let generation = self.net.trouble_generation;
        self.note(format!(
            "network: drop {}‰ dup {}‰ delay ≤ {} ms",
            self.net.drop_per_million / 1000,
            self.net.duplicate_per_million / 1000,
            self.net.delay_max_us / 1000
        ));
        let duration = self.rng.range_inclusive(100_000, 2_000_000);
        self.schedule(duration, EventKind::EndNetworkTrouble { generation });
    }

    fn fault_clock_skew(&mut self) {
        let k = self.rng.below(self.nodes.len() as u64) as usize;
        let skew = self.rng.range_inclusive(1000 - SKEW_PERMILLE, 1000 + SKEW_PERMILLE);
        self.nodes[k].tick_interval_us = TICK_US * skew / 1000;
        let id = self.nodes[k].id;
        self.note(format!("{id} clock now ticks every {} us", self.nodes[k].tick_interval_us));
    }

    fn fault_leader_transfer(&mut self) {
        let g = self.rng.below(self.checkers.len() as u64) as usize;
        let Some(k) = self.leader_of(g) else { return };
        let voters: Vec<NodeId> = self.nodes[k].live[g].raft.membership().all_voters().into_iter().collect();
        let Some(&to) = self.rng.pick(&voters) else {
            return;
        };
        let id = self.nodes[k].id;
        if to != id && self.nodes[k].live[g].raft.transfer_leader(to).is_ok() {
            self.stats.transfers += 1;
            self.note(format!("g{g} leader {id} transfers to {to}"));
            self.drive(k, g);
        }
    }

    fn fault_membership_change(&mut self) {
        let g = self.rng.below(self.checkers.len() as u64) as usize;
        let Some(k) = self.leader_of(g) else { return };
        let m = self.nodes[k].live[g].raft.membership().clone();
        if m.is_joint() {
            return;
        }
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let outsiders: Vec<NodeId> = all.iter().copied().filter(|id| !m.contains(*id)).collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let mut changes = Vec::new();
        match self.rng.below(6) {
            0 => {
                if let Some(&id) = self.rng.pick(&outsiders) {
                    changes.push((id, ConfChangeKind::AddLearner));
                }
            }
            1 => {
                if let Some(&id) = self.rng.pick(&learners) {
                    if voters.len() < 5 {
                        changes.push((id, ConfChangeKind::AddVoter));
                    }
                }
            }
            2 => {
                if voters.len() > 3 {
                    if let Some(&id) = self.rng.pick(&voters) {
                        changes.push((id, ConfChangeKind::Remove));
                    }
                }
            }
            3 => {
                // Replace one voter with an outsider or learner: a joint change.
                let mut fresh = outsiders.clone();
                fresh.extend(learners.iter().copied());
                if let (Some(&add), Some(&remove)) = (self.rng.pick(&fresh), self.rng.pick(&voters)) {
                    changes.push((add, ConfChangeKind::AddVoter));
                    changes.push((remove, ConfChangeKind::Remove));
                }
            }
            4 => {
                // Replace two voters at once.
                let mut fresh = outsiders.clone();
                fresh.extend(learners.iter().copied());
                if fresh.len() >= 2 && voters.len() >= 3 {
                    let a = self.rng.below(fresh.len() as u64) as usize;
                    let b = (a + 1 + self.rng.below(fresh.len() as u64 - 1) as usize) % fresh.len();
                    let x = self.rng.below(voters.len() as u64) as usize;
                    let y = (x + 1 + self.rng.below(voters.len() as u64 - 1) as usize) % voters.len();
                    changes.push((fresh[a], ConfChangeKind::AddVoter));
                    changes.push((fresh[b], ConfChangeKind::AddVoter));
                    changes.push((voters[x], ConfChangeKind::Remove));
                    changes.push((voters[y], ConfChangeKind::Remove));
                }
            }
            _ => {
                // Demote a voter to learner.
                if voters.len() > 3 {
                    if let Some(&id) = self.rng.pick(&voters) {
                        changes.push((id, ConfChangeKind::AddLearner));
                    }
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        let id = self.nodes[k].id;
        let text = changes
            .iter()
            .map(|(id, kind)| match kind {
                ConfChangeKind::AddVoter => format!("+voter {id}"),
                ConfChangeKind::AddLearner => format!("+learner {id}"),
                ConfChangeKind::Remove => format!("-{id}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        if self.nodes[k].live[g].raft.propose_conf_change(ConfChange::Change(changes)).is_ok() {
            self.stats.membership_changes += 1;
            self.note(format!("g{g} leader {id} proposes membership change [{text}]"));
            self.drive(k, g);
        }
    }

    // ------------------------------------------------------------ heal and liveness

    fn heal_all(&mut self) {
        self.healed = true;
        self.net = Network::calm();
        self.net.links_generation = u64::MAX / 2;
        self.net.trouble_generation = u64::MAX / 2;
        for k in 0..self.nodes.len() {
            if !self.nodes[k].up {
                self.start_node(k);
            }
        }
        self.note("all faults healed".into());
        // Faults stop; clients go on writing.
        self.queue.retain_fault_free();
    }

    fn group_live(&self, g: usize) -> bool {
        self.liveness_probe[g]
            .is_some_and(|(index, term)| self.checkers[g].committed_term(index) == Some(term))
    }

    fn group_converged(&self, g: usize) -> bool {
        let Some(k) = self.leader_of(g) else { return false };
        let leader = &self.nodes[k].live[g].raft;
        let (commit, last) = (leader.commit_index(), leader.last_index());
        commit == last
            && leader.membership().members().into_iter().all(|id| {
                let node = &self.nodes[(id.0 - 1) as usize];
                node.up && node.live[g].sm.applied == commit
            })
    }

    fn all_groups_converged(&self) -> bool {
        (0..self.checkers.len()).all(|g| self.group_converged(g))
    }

    fn all_groups_live(&self) -> bool {
        (0..self.checkers.len()).all(|g| self.group_live(g))
    }
}

/// Removes pending fault events (and restarts, which the heal already did) from the queue.
trait RetainFaultFree {
    fn retain_fault_free(&mut self);
}

impl RetainFaultFree for BinaryHeap<Reverse<(u64, u64, EventKind)>> {
    fn retain_fault_free(&mut self) {
        self.retain(|Reverse((_, _, kind))| {
            !matches!(
                kind,
                EventKind::Fault
                    | EventKind::Restart { .. }
                    | EventKind::HealLinks { .. }
                    | EventKind::EndNetworkTrouble { .. }
            )
        });
    }
}
