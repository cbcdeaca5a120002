//! The multi-Raft host: every replica on this node, driven by one loop on one thread.
//!
//! One driver round (STYLE.md convention 4):
//! 1. drain inputs (peer batches, proposals, reads, ticks) from one bounded channel;
//! 2. apply the ticks that are due by the monotonic clock to every *awake* group — catch-up
//!    ticks included, so a process that was paused (SIGSTOP) sees its leases expire before it
//!    serves anything;
//! 3. step messages, proposals and reads into their groups;
//! 4. collect `Ready` from the groups touched this round and write all of it: hard states and
//!    snapshots in one redb transaction (durable if a term, vote or snapshot changed), then
//!    every group's new entries as **one** log record with one fsync. Committed entries are
//!    applied into memory (the storage's overlay, which reads see): a round that only applies
//!    needs no disk at all, because the entries are already durable on a quorum;
//! 5. only then send the round's messages, coalesced: one `RaftBatch` per peer, heartbeats as
//!    compact tuples;
//! 6. answer proposals whose entries applied, serve reads whose index is applied, `advance()`;
//! 7. every `checkpoint_interval` (or `checkpoint_bytes_max`), a checkpoint writes the applied
//!    writes into the data table together with the groups' applied indexes — the two always
//!    move together, so a restarted group re-applies exactly the entries after its checkpoint
//!    — and then the logs may be compacted up to it; log segments whose records no group
//!    needs are deleted, oldest first, and idle groups that keep the oldest one are compacted
//!    once the log spans more than `log_segments_max` segments.
//!
//! Quiescence: a leader whose group has been idle and fully replicated for
//! `quiesce_idle_ticks` tells its followers (a `(range, term)` in the batch) and every replica
//! stops ticking that group; any message, proposal or read wakes it. A follower still notices a
//! dead leader: peers exchange a batch at least every heartbeat interval (node liveness), and
//! when a peer is silent for `peer_dead_after`, the groups it led wake up and elect.
//!
//! Invariants: nothing in a round's messages leaves before the round's transaction commits; a
//! failed commit stops the driver (the storage is poisoned, fsync is never retried); quiesced
//! groups never tick and never serve lease reads (their lease is reset when they wake).

#![allow(clippy::disallowed_methods)] // the host owns the monotonic clock and its thread

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::ids::{IntMap, RangeId};
use crate::kv::{Command, CommandResult};
use crate::raft::Snapshot;
use crate::raft::{
    Config, EntryPayload, InitialState, LogIndex, Membership, Message, MessageBody, NodeId, RaftError,
    RawNode, ReadMode, Role, Term,
};
use crate::storage::{GroupRecord, NodeStorage, RangeDescriptor, RangeDigest, StorageError};
use crate::transport::wire::{HeartbeatEntry, HeartbeatResponseEntry, RaftBatch, SnapshotChunk};

/// Capacity of the driver's input channel; senders wait (proposals) or drop (peer batches)
/// when it is full.
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Inputs handled per round at most, so one round's latency stays bounded.
pub const ROUND_INPUTS_MAX: usize = 4_096;

/// A driver sharing its runtime with the network (`Driver::run_on_runtime`) hands a round's
/// fsync to another thread when the round wrote at least this many entries: the node is busy,
/// and the network's work overlaps the fsync. Rounds of fewer entries sync in place: on a
/// quiet node the two thread hand-offs would cost more latency than the overlap gains.
const OFFLOAD_SYNC_ENTRIES_MIN: u64 = 4;

/// A snapshot read for a range is sent again as it is — to the peer that needs it again (same
/// index, so the peer keeps the chunks it already has) or to another one — if it is needed
/// within this long, in the same term, and the leader's log still starts at or before its index.
const SNAPSHOT_REUSE_FOR: Duration = Duration::from_secs(30);

/// Errors returned to clients of the store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KvError {
    #[error("not the leader of {range} (leader hint: {leader_hint:?})")]
    NotLeader { range: RangeId, leader_hint: Option<NodeId> },
    #[error("range {0} not found on this node")]
    RangeNotFound(RangeId),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the outcome is unknown: {0}")]
    Unknown(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Tuning of the host. Every duration and limit is named with its unit.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub node_id: NodeId,
    pub tick_interval: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub lease_drift_ticks: u32,
    /// Ticks a leader's group must stay idle before it quiesces.
    pub quiesce_idle_ticks: u32,
    /// A peer silent this long is presumed dead; the quiesced groups it led wake up.
    pub peer_dead_after: Duration,
    /// Entries kept in the log after the applied index before compaction.
    pub log_retain_entries: u64,
    /// Snapshots travel in chunks of at most this many bytes...
    pub snapshot_chunk_bytes: usize,
    /// ...and at most this many chunks per peer per driver round, so that a large snapshot
    /// never crowds out a round's Raft traffic or makes a frame large.
    pub snapshot_chunks_per_round: usize,
    /// A snapshot being received may not exceed this (memory bound on the receiver).
    pub snapshot_bytes_max: u64,
    /// How fast this node's clock runs relative to real time: 1.0 except in fault-injection
    /// tests. Leases stay safe while the drift between replicas stays within
    /// `lease_drift_ticks` per election timeout.
    pub clock_rate: f64,
    /// Fault-injection tests only: keep disk writes in memory until each fsync, so that a
    /// killed process loses what a power cut would (`NodeStorage::open_writeback`).
    pub lose_unsynced_writes: bool,
    /// Send a leader's new entries to its followers before its own fsync, so that the two
    /// fsyncs overlap (Raft thesis §10.2.1).
    pub early_leader_appends: bool,
    /// Applied writes collect in memory and reach the data table in a checkpoint at least
    /// this often (the Raft log is their durable record meanwhile; a restart re-applies the
    /// entries after the last checkpoint)...
    pub checkpoint_interval: Duration,
    /// ...or, all of it at once, as soon as this many bytes of keys and values are waiting.
    pub checkpoint_bytes_max: usize,
    /// A checkpoint is spread over this many rounds, each writing a slice of the ranges (one
    /// every `checkpoint_interval / checkpoint_slices`), so that the driver never stops for a
    /// whole node's worth of writes at once.
    pub checkpoint_slices: u32,
    /// Once the log spans more segment files than this, the groups whose entries keep the
    /// oldest one on disk are compacted whatever `log_retain_entries` says (an idle group
    /// compacts rarely, and a segment is deleted only when no group needs anything in it).
    pub log_segments_max: usize,
}

impl StoreConfig {
    pub fn new(node_id: NodeId) -> StoreConfig {
        StoreConfig {
            node_id,
            tick_interval: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            lease_drift_ticks: 2,
            quiesce_idle_ticks: 40,
            peer_dead_after: Duration::from_millis(1_000),
            log_retain_entries: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_per_round: 4,
            snapshot_bytes_max: 4 << 30,
            clock_rate: 1.0,
            lose_unsynced_writes: false,
            early_leader_appends: true,
            checkpoint_interval: Duration::from_millis(2_000),
            checkpoint_bytes_max: 64 << 20,
            checkpoint_slices: 8,
            log_segments_max: 4,
        }
    }

    fn raft_config(&self) -> Config {
        let mut cfg = Config::new(self.node_id);
        cfg.election_ticks = self.election_ticks;
        cfg.heartbeat_ticks = self.heartbeat_ticks;
        cfg.lease_drift_ticks = self.lease_drift_ticks;
        // The range's data is the snapshot: read when one is sent (`Driver::queue_snapshot`).
        cfg.host_snapshot_data = true;
        cfg
    }
}

/// Reads served by the store after a linearizable confirmation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    Get {
        #[serde(with = "crate::bytes_serde")]
        key: Vec<u8>,
    },
    Scan {
        #[serde(with = "crate::bytes_serde")]
        start: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        end: Vec<u8>,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadResult {
    Value(Option<Vec<u8>>),
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
}

type Reply<T> = oneshot::Sender<Result<T, KvError>>;

/// What the driver consumes.
#[derive(Debug)]
pub enum Input {
    Batch(RaftBatch),
    Propose {
        range: RangeId,
        command: Command,
        reply: Reply<CommandResult>,
    },
    Read {
        range: RangeId,
        op: ReadOp,
        reply: Reply<ReadResult>,
    },
    TransferLeader {
        range: RangeId,
        to: NodeId,
    },
    /// Fingerprints of every hosted range's data, for convergence checks.
    Digest {
        reply: Reply<Vec<RangeDigest>>,
    },
    Tick,
}

/// A range as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RangeStatus {
    pub id: u64,
    pub start: String,
    pub end: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub role: String,
    pub replicas: Vec<u64>,
    pub applied: u64,
    pub commit: u64,
    pub quiesced: bool,
    /// The index the log is compacted to (its snapshot's), 0 before the first compaction.
    pub snapshot: u64,
    /// Leader only: each member's replication state, for diagnosis.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub progress: String,
}

/// What the driver publishes for observers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStatus {
    pub node_id: u64,
    pub ranges: Vec<RangeStatus>,
    /// Peers presumed dead (silent for longer than `peer_dead_after`).
    pub dead_peers: Vec<u64>,
    pub fatal: Option<String>,
}

/// What the driver shares with clients for routing: small, read on every request.
#[derive(Debug, Default)]
struct Routing {
    leaders: HashMap<RangeId, NodeId>,
    dead_peers: BTreeSet<NodeId>,
    fatal: Option<String>,
}

/// The handle clients use; cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::Sender<Input>,
    status: Arc<Mutex<StoreStatus>>,
    routing: Arc<Mutex<Routing>>,
    ranges: Arc<Vec<RangeDescriptor>>,
}

impl StoreHandle {
    pub fn ranges(&self) -> &[RangeDescriptor] {
        &self.ranges
    }

    pub fn range_for(&self, key: &[u8]) -> Option<&RangeDescriptor> {
        self.ranges.iter().find(|r| r.contains(key))
    }

    pub fn status(&self) -> StoreStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The leader this node believes `range` has.
    pub fn leader_of(&self, range: RangeId) -> Option<NodeId> {
        self.routing.lock().ok()?.leaders.get(&range).copied()
    }

    /// Why the node stopped, if a storage failure stopped it.
    pub fn fatal(&self) -> Option<String> {
        self.routing.lock().ok()?.fatal.clone()
    }

    /// Whether the driver has stopped: after a fatal storage failure, or a panic (whose message
    /// the panic hook printed). Nothing is served after it.
    pub fn driver_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether this node presumes `peer` dead (node liveness).
    pub fn peer_dead(&self, peer: NodeId) -> bool {
        self.routing.lock().is_ok_and(|r| r.dead_peers.contains(&peer))
    }

    /// Hands a batch from a peer to the driver; dropped if the driver is overloaded (Raft
    /// tolerates lost messages).
    pub fn deliver(&self, batch: RaftBatch) {
        if self.tx.try_send(Input::Batch(batch)).is_err() {
            metrics::counter!("flotilla_store_inputs_dropped_total").increment(1);
        }
    }

    pub fn tick(&self) -> bool {
        !matches!(self.tx.try_send(Input::Tick), Err(mpsc::error::TrySendError::Closed(_)))
    }

    /// Proposes a command to the local replica of `range`, which must lead it.
    pub async fn propose(&self, range: RangeId, command: Command) -> Result<CommandResult, KvError> {
        command.validate().map_err(KvError::Invalid)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose { range, command, reply })
            .await
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| KvError::Unknown("the node stopped before the write applied".into()))?
    }

    /// A linearizable read on the local replica of `range`, which must lead it.
    pub async fn read(&self, range: RangeId, op: ReadOp) -> Result<ReadResult, KvError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Read { range, op, reply })
            .await
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| KvError::Unavailable("the node stopped before the read completed".into()))?
    }

    /// Fingerprints (applied index, key count, data hash) of every range hosted here, each
    /// taken at its applied index. Costs a full read of the data: a test and repair tool.
    pub async fn digests(&self) -> Result<Vec<RangeDigest>, KvError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Digest { reply })
            .await
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| KvError::Unavailable("the node stopped before the digest completed".into()))?
    }

    pub async fn transfer_leader(&self, range: RangeId, to: NodeId) -> Result<(), KvError> {
        self.tx
            .send(Input::TransferLeader { range, to })
            .await
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))
    }
}

/// Whether a driver step may wait inside a round (see `Driver::run_on_runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// Never: the step runs to its end in one go (its own thread, the simulator).
    Never,
    /// Yields to the runtime once the round's early appends are sent, before its fsync.
    Yield,
}

/// Runs blocking storage work on tokio's pool thread (`Pause::Yield`): the runtime serves the
/// network meanwhile. A panic there is a storage failure like any other.
async fn on_pool_thread<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Io(format!("{what} task failed: {e}")))?
}

/// Runs a step that never pauses (`Pause::Never`): it completes in its first poll.
fn finish_now<T>(step: impl std::future::Future<Output = T>) -> T {
    let mut step = std::pin::pin!(step);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match step.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("a driver step without pauses never waits"),
    }
}

/// Splits the keyspace into `count` ranges. Boundaries are spread evenly over two-byte
/// prefixes from `0x2100` ("!") to `0x7f00` (DEL), where printable keys live, so that text keys
/// (what Redis clients write) land in every range; the first range also takes everything
/// below, the last everything above.
pub fn initial_ranges(count: u32, replicas: &[NodeId]) -> Vec<RangeDescriptor> {
    const LOW: u64 = 0x2100;
    const HIGH: u64 = 0x7f00;
    let count = count.max(1);
    let boundary = |i: u32| -> Vec<u8> {
        if i == 0 || i == count {
            return Vec::new();
        }
        let point = LOW + (u64::from(i) * (HIGH - LOW)) / u64::from(count);
        vec![(point >> 8) as u8, point as u8]
    };
    (0..count)
        .map(|i| RangeDescriptor {
            id: RangeId(u64::from(i) + 1),
            start: boundary(i),
            end: boundary(i + 1),
            replicas: replicas.to_vec(),
        })
        .collect()
}

struct Group {
    desc: RangeDescriptor,
    raft: RawNode,
    record: GroupRecord,
    quiesced: bool,
    idle_ticks: u32,
}

struct PendingRead {
    range: RangeId,
    op: ReadOp,
    reply: Reply<ReadResult>,
    index: Option<LogIndex>,
}

/// Sends one batch to a peer. Implemented by the transport.
pub type BatchSender = Arc<dyn Fn(RaftBatch) + Send + Sync>;

/// The host's only source of time: a monotonic duration since an arbitrary origin. Production
/// uses `MonotonicClock`; the simulator advances a `ManualClock` itself.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// `Instant`-based time, optionally running at a skewed rate (fault-injection tests only: a
/// node whose clock runs fast or slow).
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
    rate: f64,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock { origin: Instant::now(), rate: 1.0 }
    }
}

impl MonotonicClock {
    /// A clock that advances `rate` seconds per real second (`rate` > 0).
    pub fn with_rate(rate: f64) -> MonotonicClock {
        assert!(rate.is_finite() && rate > 0.0, "clock rate must be positive, got {rate}");
        MonotonicClock { origin: Instant::now(), rate }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        let elapsed = self.origin.elapsed();
        if self.rate == 1.0 {
            elapsed
        } else {
            elapsed.mul_f64(self.rate)
        }
    }
}

/// Time that moves only when told to (simulation, tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    pub fn set(&self, now: Duration) {
        self.micros.store(now.as_micros() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.micros.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// One replica's state, for observers (the simulator's checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    pub range: RangeId,
    pub term: Term,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
    /// The last index in this replica's log (committed or not).
    pub last_index: LogIndex,
    pub voters: Vec<NodeId>,
    /// Leader only: per-member replication state (diagnostics).
    pub progress: String,
}

/// Opens the node's groups (bootstrapping them on an empty data directory) and starts the
/// driver thread on the monotonic clock.
pub fn start(
    cfg: StoreConfig,
    storage: NodeStorage,
    bootstrap: &[RangeDescriptor],
    peers: Vec<NodeId>,
    send: BatchSender,
) -> Result<(StoreHandle, std::thread::JoinHandle<()>), KvError> {
    let clock = Arc::new(MonotonicClock::with_rate(cfg.clock_rate));
    let (handle, mut driver) = build(cfg, storage, bootstrap, peers, send, clock)?;
    let thread = std::thread::Builder::new()
        .name(format!("flotilla-driver-{}", driver.cfg.node_id.0))
        .spawn(move || driver.run())
        .map_err(|e| KvError::Unavailable(format!("cannot start the driver thread: {e}")))?;
    Ok((handle, thread))
}

/// Like [`start`], but the driver runs as a task on the current runtime instead of a thread of
/// its own. The runtime must be a current-thread runtime that only this node uses: the
/// driver's synchronous work (small rounds' fsyncs, compactions) blocks it (see
/// `Driver::run_on_runtime`).
pub fn start_on_runtime(
    cfg: StoreConfig,
    storage: NodeStorage,
    bootstrap: &[RangeDescriptor],
    peers: Vec<NodeId>,
    send: BatchSender,
) -> Result<StoreHandle, KvError> {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if !matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)) {
        return Err(KvError::Invalid(format!(
            "a driver on the runtime needs a current-thread tokio runtime, not {flavor:?}"
        )));
    }
    let clock = Arc::new(MonotonicClock::with_rate(cfg.clock_rate));
    let (handle, driver) = build(cfg, storage, bootstrap, peers, send, clock)?;
    tokio::spawn(driver.run_on_runtime());
    Ok(handle)
}

/// Opens the node's groups and returns the driver without starting a thread: the simulator
/// steps it itself (`Driver::step`), on its own clock.
pub fn build(
    cfg: StoreConfig,
    storage: NodeStorage,
    bootstrap: &[RangeDescriptor],
    peers: Vec<NodeId>,
    send: BatchSender,
    clock: Arc<dyn Clock>,
) -> Result<(StoreHandle, Driver), KvError> {
    let storage_err = |e: StorageError| KvError::Storage(e.to_string());
    let mut ranges = storage.ranges().map_err(storage_err)?;
    if ranges.is_empty() {
        // A new node of the initial cluster: every member writes the same bootstrap state.
        let mut round = storage.begin_round().map_err(storage_err)?;
        for desc in bootstrap {
            let initial = InitialState::bootstrap(Membership::with_voters(desc.replicas.iter().copied()));
            round.put_range(desc).map_err(storage_err)?;
            round.append(desc.id, &initial.entries).map_err(storage_err)?;
            round
                .put_group(desc.id, &GroupRecord { hard_state: initial.hard_state, ..GroupRecord::default() })
                .map_err(storage_err)?;
        }
        round.commit().map_err(storage_err)?;
        ranges = storage.ranges().map_err(storage_err)?;
    }
    let mut groups = BTreeMap::new();
    for desc in &ranges {
        // The snapshot comes without data (`load_group`): the range's data *is* the snapshot,
        // read when one is sent (`Driver::queue_snapshot`).
        let (initial, record) = storage.load_group(desc.id).map_err(storage_err)?.ok_or_else(|| {
            KvError::Storage(format!("range {} has a descriptor but no Raft state", desc.id))
        })?;
        let seed = cfg.node_id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ desc.id.0;
        let raft = RawNode::new(cfg.raft_config(), initial, seed)
            .map_err(|e: RaftError| KvError::Storage(format!("range {}: {e}", desc.id)))?;
        groups.insert(desc.id, Group { desc: desc.clone(), raft, record, quiesced: false, idle_ticks: 0 });
    }
    let (tx, rx) = mpsc::channel(INPUT_QUEUE_MAX);
    let status = Arc::new(Mutex::new(StoreStatus { node_id: cfg.node_id.0, ..StoreStatus::default() }));
    let routing = Arc::new(Mutex::new(Routing::default()));
    let handle =
        StoreHandle { tx, status: status.clone(), routing: routing.clone(), ranges: Arc::new(ranges) };
    let now = clock.now();
    let driver = Driver {
        clock,
        awake: groups.keys().copied().collect(),
        groups,
        storage,
        send,
        rx,
        status,
        routing,
        proposals: IntMap::default(),
        reads: BTreeMap::new(),
        next_ctx: 1,
        started: now,
        ticks_done: 0,
        peer_heard: peers.iter().map(|&p| (p, now)).collect(),
        peers_dead: BTreeSet::new(),
        peers,
        touched: BTreeSet::new(),
        outbox: BTreeMap::new(),
        snapshots_out: BTreeMap::new(),
        snapshots_read: BTreeMap::new(),
        snapshots_in: BTreeMap::new(),
        liveness_ticks: 0,
        status_published: now,
        status_dirty: BTreeSet::new(),
        status_cache: BTreeMap::new(),
        status_dead: Vec::new(),
        last_checkpoint: now,
        checkpoint_phase: 0,
        compact_candidates: BTreeSet::new(),
        last_log_check: now,
        step_synced: false,
        cfg,
    };
    Ok((handle, driver))
}

/// A snapshot being received: the first chunk's header, and the pieces so far by offset.
type IncomingSnapshot = (SnapshotChunk, BTreeMap<u64, Vec<u8>>);

/// The driver loop's state: every replica on the node.
pub struct Driver {
    cfg: StoreConfig,
    clock: Arc<dyn Clock>,
    storage: NodeStorage,
    groups: BTreeMap<RangeId, Group>,
    /// Groups that tick: not quiesced.
    awake: BTreeSet<RangeId>,
    send: BatchSender,
    rx: mpsc::Receiver<Input>,
    status: Arc<Mutex<StoreStatus>>,
    routing: Arc<Mutex<Routing>>,
    /// (range, index) → proposals waiting for their entry to apply: the term they were proposed
    /// in, when, and whom to answer.
    proposals: IntMap<(RangeId, LogIndex), (Term, Duration, Reply<CommandResult>)>,
    reads: BTreeMap<u64, PendingRead>,
    next_ctx: u64,
    started: Duration,
    ticks_done: u64,
    peers: Vec<NodeId>,
    peer_heard: BTreeMap<NodeId, Duration>,
    peers_dead: BTreeSet<NodeId>,
    /// Groups that got input this round and may have a `Ready`.
    touched: BTreeSet<RangeId>,
    outbox: BTreeMap<NodeId, RaftBatch>,
    /// Snapshot chunks waiting to go, per (peer, range); one transfer at a time in a term.
    snapshots_out: BTreeMap<(NodeId, RangeId), VecDeque<SnapshotChunk>>,
    /// The last snapshot read for each range, with when and in which term: see
    /// `SNAPSHOT_REUSE_FOR`.
    snapshots_read: BTreeMap<RangeId, (Duration, Term, Arc<Snapshot>)>,
    /// Snapshots being received, per (sender, range): the first chunk's header and the pieces
    /// so far by offset.
    snapshots_in: BTreeMap<(NodeId, RangeId), IncomingSnapshot>,
    liveness_ticks: u32,
    status_published: Duration,
    /// Groups whose published status may be stale.
    status_dirty: BTreeSet<RangeId>,
    status_cache: BTreeMap<RangeId, RangeStatus>,
    status_dead: Vec<u64>,
    last_checkpoint: Duration,
    /// The slice of the ranges the next checkpoint round writes.
    checkpoint_phase: u32,
    /// Groups that applied entries since the last checkpoint: their logs may be compacted
    /// after the next one.
    compact_candidates: BTreeSet<RangeId>,
    /// When `release_log_segments` last looked.
    last_log_check: Duration,
    /// Whether the current step has committed a round with an fsync (for the step metric).
    step_synced: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("node", &self.cfg.node_id).field("groups", &self.groups.len()).finish()
    }
}

impl Driver {
    /// The thread body: wait for inputs, then run one step over them and whatever else is queued.
    pub fn run(&mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            if self.step(vec![first]).is_err() {
                return;
            }
        }
    }

    /// The task body when the driver shares a current-thread runtime with the node's network
    /// (`NodeConfig::single_thread`): the same steps, but a round that sends appends before its
    /// fsync lets them leave first (it yields to the runtime), a round of
    /// `OFFLOAD_SYNC_ENTRIES_MIN` entries or more and every checkpoint wait for their fsyncs on
    /// a pool thread while the runtime serves the network, and after every step the runtime
    /// sends what the step queued and gathers the next inputs. Smaller rounds' fsyncs,
    /// compactions and snapshot work still block the thread — and with it this node's network
    /// — while they run.
    pub async fn run_on_runtime(mut self) {
        while let Some(first) = self.rx.recv().await {
            if self.step_with(vec![first], Pause::Yield).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// One driver round over `inputs` (plus anything queued on the handle's channel). Returns
    /// the fatal error if storage failed; the driver must not be stepped again after that.
    pub fn step(&mut self, inputs: Vec<Input>) -> Result<(), String> {
        finish_now(self.step_with(inputs, Pause::Never))
    }

    async fn step_with(&mut self, mut inputs: Vec<Input>, pause: Pause) -> Result<(), String> {
        while inputs.len() < ROUND_INPUTS_MAX {
            match self.rx.try_recv() {
                Ok(input) => inputs.push(input),
                Err(_) => break,
            }
        }
        let started = self.clock.now();
        self.step_synced = false;
        self.apply_due_ticks();
        for input in inputs {
            self.handle(input);
        }
        let mut outcome = self.round(pause).await;
        if outcome.is_ok() {
            outcome = self.maybe_checkpoint(pause).await.and_then(|()| self.release_log_segments());
        }
        if let Err(e) = outcome {
            let text = format!("storage failure, node stopping: {e}");
            tracing::error!(node = self.cfg.node_id.0, "{text}");
            if let Ok(mut s) = self.status.lock() {
                s.fatal = Some(text.clone());
            }
            if let Ok(mut r) = self.routing.lock() {
                r.fatal = Some(text.clone());
            }
            self.fail_everything(KvError::Storage(e.to_string()));
            return Err(text);
        }
        self.flush_outbox();
        // The driver's time per step: with `kind="memory"` (no fsync in it) it is the node's own
        // work per step — set it beside the write's time (`flotilla_store_write_seconds`).
        let kind = if self.step_synced { "durable" } else { "memory" };
        metrics::histogram!("flotilla_driver_step_seconds", "kind" => kind)
            .record(self.clock.now().saturating_sub(started).as_secs_f64());
        // Publishing walks every group: every 100 ms for small nodes, less often for nodes
        // with thousands of (mostly idle) groups.
        let publish_every = Duration::from_millis(100 + self.groups.len() as u64 / 10);
        if self.clock.now().saturating_sub(self.status_published) >= publish_every {
            self.publish_status();
        }
        Ok(())
    }

    /// Every replica's state, in range order.
    pub fn group_states(&self) -> Vec<GroupState> {
        self.groups
            .values()
            .map(|g| {
                let st = g.raft.status();
                GroupState {
                    range: g.desc.id,
                    term: st.term,
                    role: st.role,
                    leader: st.leader,
                    commit: st.commit,
                    applied: g.record.applied,
                    last_index: g.raft.last_index(),
                    voters: st.membership.all_voters().into_iter().collect(),
                    progress: g.raft.progress_summary(),
                }
            })
            .collect()
    }

    /// The node's storage (for the simulator's final checks).
    pub fn storage(&self) -> &NodeStorage {
        &self.storage
    }

    fn fail_everything(&mut self, error: KvError) {
        for (_, (_, _, reply)) in self.proposals.drain() {
            let _ = reply.send(Err(KvError::Unknown(error.to_string())));
        }
        for (_, read) in std::mem::take(&mut self.reads) {
            let _ = read.reply.send(Err(error.clone()));
        }
    }

    // ------------------------------------------------------------ time

    fn apply_due_ticks(&mut self) {
        let elapsed = self.clock.now().saturating_sub(self.started);
        let due = (elapsed.as_micros() / self.cfg.tick_interval.as_micros().max(1)) as u64;
        // Catch up at most a few election timeouts' worth; beyond that every lease and
        // election timer has long expired anyway.
        let todo = due.saturating_sub(self.ticks_done).min(u64::from(self.cfg.election_ticks) * 4);
        self.ticks_done = due;
        for _ in 0..todo {
            self.tick_once();
        }
        if todo > 0 {
            self.check_peer_liveness();
        }
    }

    fn tick_once(&mut self) {
        let awake: Vec<RangeId> = self.awake.iter().copied().collect();
        for range in awake {
            let Some(g) = self.groups.get_mut(&range) else { continue };
            g.raft.tick();
            self.touched.insert(range);
            if g.raft.is_quiescent() {
                g.idle_ticks += 1;
                if g.idle_ticks >= self.cfg.quiesce_idle_ticks {
                    self.quiesce(range);
                }
            } else {
                g.idle_ticks = 0;
            }
        }
        // Node liveness: every peer hears from us at least once per heartbeat interval.
        self.liveness_ticks += 1;
        if self.liveness_ticks >= self.cfg.heartbeat_ticks {
            self.liveness_ticks = 0;
            for &peer in &self.peers {
                self.outbox.entry(peer).or_insert_with(|| RaftBatch {
                    from: self.cfg.node_id,
                    to: peer,
                    ..RaftBatch::default()
                });
            }
        }
    }

    fn quiesce(&mut self, range: RangeId) {
        let Some(g) = self.groups.get_mut(&range) else { return };
        if g.quiesced {
            return;
        }
        g.quiesced = true;
        g.idle_ticks = 0;
        self.awake.remove(&range);
        self.status_dirty.insert(range);
        let term = g.raft.term();
        let members: Vec<NodeId> = g.raft.membership().members().into_iter().collect();
        for peer in members {
            if peer != self.cfg.node_id {
                self.batch_for(peer).quiesce.push((range, term));
            }
        }
        metrics::gauge!("flotilla_ranges_quiesced").increment(1.0);
    }

    fn wake(&mut self, range: RangeId) {
        let Some(g) = self.groups.get_mut(&range) else { return };
        if g.quiesced {
            g.quiesced = false;
            g.idle_ticks = 0;
            g.raft.reset_lease();
            self.awake.insert(range);
            self.status_dirty.insert(range);
            metrics::gauge!("flotilla_ranges_quiesced").decrement(1.0);
        }
    }

    fn check_peer_liveness(&mut self) {
        let now = self.clock.now();
        let dead: Vec<NodeId> = self
            .peer_heard
            .iter()
            .filter(|(_, &heard)| now.saturating_sub(heard) > self.cfg.peer_dead_after)
            .map(|(&p, _)| p)
            .collect();
        for peer in dead {
            if self.peers_dead.insert(peer) {
                tracing::warn!(
                    node = self.cfg.node_id.0,
                    peer = peer.0,
                    "peer presumed dead; waking the groups it led"
                );
                let led: Vec<RangeId> = self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.quiesced && g.raft.leader() == Some(peer))
                    .map(|(&r, _)| r)
                    .collect();
                for range in led {
                    self.wake(range);
                }
            }
        }
    }

    // ------------------------------------------------------------ inputs

    fn handle(&mut self, input: Input) {
        match input {
            Input::Tick => {}
            Input::Batch(batch) => self.handle_batch(batch),
            Input::Propose { range, command, reply } => self.handle_propose(range, command, reply),
            Input::Read { range, op, reply } => self.handle_read(range, op, reply),
            Input::TransferLeader { range, to } => {
                self.wake(range);
                if let Some(g) = self.groups.get_mut(&range) {
                    let _ = g.raft.transfer_leader(to);
                    self.touched.insert(range);
                }
            }
            Input::Digest { reply } => {
                let digests: Result<Vec<RangeDigest>, StorageError> =
                    self.groups.values().map(|g| self.storage.range_digest(&g.desc)).collect();
                let _ = reply.send(digests.map_err(|e| KvError::Storage(e.to_string())));
            }
        }
    }

    fn handle_batch(&mut self, batch: RaftBatch) {
        let me = self.cfg.node_id;
        if batch.to != me {
            metrics::counter!("flotilla_store_misaddressed_batches_total").increment(1);
            return;
        }
        let from = batch.from;
        let now = self.clock.now();
        self.peer_heard.insert(from, now);
        self.peers_dead.remove(&from);
        let mut messages: Vec<(RangeId, Message)> = batch.messages;
        for hb in batch.heartbeats {
            let body = MessageBody::Heartbeat { commit: hb.commit, read_seq: hb.read_seq };
            messages.push((hb.range, Message { from, to: me, term: hb.term, body }));
        }
        for hr in batch.heartbeat_responses {
            let body = MessageBody::HeartbeatResponse { read_seq: hr.read_seq };
            messages.push((hr.range, Message { from, to: me, term: hr.term, body }));
        }
        for chunk in batch.snapshot_chunks {
            if let Some((range, message)) = self.receive_snapshot_chunk(from, chunk) {
                messages.push((range, message));
            }
        }
        for (range, message) in messages {
            let Some(g) = self.groups.get(&range) else { continue };
            if let MessageBody::InstallSnapshot { snapshot } = &message.body {
                // The core would adopt the snapshot's metadata at once; data that cannot be
                // installed must be refused before that, not fail the storage round later.
                if let Err(e) = crate::storage::validate_snapshot_data(range, &snapshot.data) {
                    tracing::warn!(node = me.0, range = range.0, peer = from.0, "refused snapshot: {e}");
                    metrics::counter!("flotilla_raft_messages_rejected_total").increment(1);
                    continue;
                }
            }
            // Heartbeats of the current term (late ones, or acknowledgements of the round just
            // before quiescing) carry nothing that needs ticking: they do not wake a group.
            let heartbeat =
                matches!(message.body, MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. });
            if !(heartbeat && message.term == g.raft.term()) {
                self.wake(range);
            }
            let Some(g) = self.groups.get_mut(&range) else { continue };
            if let Err(e) = g.raft.step(message) {
                tracing::warn!(node = me.0, range = range.0, peer = from.0, "rejected message: {e}");
                metrics::counter!("flotilla_raft_messages_rejected_total").increment(1);
            }
            self.touched.insert(range);
        }
        for (range, term) in batch.quiesce {
            if let Some(g) = self.groups.get_mut(&range) {
                if g.raft.term() == term && g.raft.leader() == Some(from) && g.raft.role() == Role::Follower {
                    if !g.quiesced {
                        g.quiesced = true;
                        metrics::gauge!("flotilla_ranges_quiesced").increment(1.0);
                    }
                    self.awake.remove(&range);
                    self.status_dirty.insert(range);
                }
            }
        }
    }

    /// Adds a chunk to the snapshot being received from `from`; returns the whole
    /// `InstallSnapshot` message once every byte is in. Chunks may arrive in any order (the
    /// network may reorder batches across reconnects); a chunk of a different snapshot starts
    /// over.
    fn receive_snapshot_chunk(&mut self, from: NodeId, chunk: SnapshotChunk) -> Option<(RangeId, Message)> {
        let key = (from, chunk.range);
        let end = chunk.offset.checked_add(chunk.bytes.len() as u64)?;
        if chunk.total > self.cfg.snapshot_bytes_max || end > chunk.total {
            tracing::warn!(
                range = chunk.range.0,
                peer = from.0,
                total = chunk.total,
                "refused snapshot chunk"
            );
            self.snapshots_in.remove(&key);
            return None;
        }
        let same = self.snapshots_in.get(&key).is_some_and(|(head, _)| {
            head.meta == chunk.meta && head.term == chunk.term && head.total == chunk.total
        });
        if !same {
            let head = SnapshotChunk { bytes: Vec::new(), ..chunk.clone() };
            self.snapshots_in.insert(key, (head, BTreeMap::new()));
        }
        let (_, pieces) = self.snapshots_in.get_mut(&key)?;
        pieces.insert(chunk.offset, chunk.bytes);
        // Complete when the pieces tile [0, total) exactly.
        let (head, pieces) = self.snapshots_in.get(&key)?;
        let mut covered = 0u64;
        for (&offset, bytes) in pieces {
            if offset != covered {
                return None;
            }
            covered += bytes.len() as u64;
        }
        if covered != head.total {
            return None;
        }
        let (head, pieces) = self.snapshots_in.remove(&key)?;
        let mut data = Vec::with_capacity(head.total as usize);
        for bytes in pieces.into_values() {
            data.extend_from_slice(&bytes);
        }
        let snapshot = Snapshot { meta: head.meta, data };
        let body = MessageBody::InstallSnapshot { snapshot };
        Some((head.range, Message { from, to: self.cfg.node_id, term: head.term, body }))
    }

    fn handle_propose(&mut self, range: RangeId, command: Command, reply: Reply<CommandResult>) {
        self.wake(range);
        let now = self.clock.now();
        let Some(g) = self.groups.get_mut(&range) else {
            let _ = reply.send(Err(KvError::RangeNotFound(range)));
            return;
        };
        if let Some(key) = command.keys().into_iter().find(|k| !g.desc.contains(k)) {
            let _ = reply.send(Err(KvError::Invalid(format!("key {key:02x?} is outside range {range}"))));
            return;
        }
        match g.raft.propose(command.encode()) {
            Ok(index) => {
                metrics::counter!("flotilla_raft_proposals_total").increment(1);
                self.proposals.insert((range, index), (g.raft.term(), now, reply));
                self.touched.insert(range);
            }
            Err(RaftError::NotLeader { leader_hint }) => {
                let _ = reply.send(Err(KvError::NotLeader { range, leader_hint }));
            }
            Err(e) => {
                let _ = reply.send(Err(KvError::Unavailable(e.to_string())));
            }
        }
    }

    fn handle_read(&mut self, range: RangeId, op: ReadOp, reply: Reply<ReadResult>) {
        self.wake(range);
        let Some(g) = self.groups.get_mut(&range) else {
            let _ = reply.send(Err(KvError::RangeNotFound(range)));
            return;
        };
        if g.raft.role() != Role::Leader {
            let _ = reply.send(Err(KvError::NotLeader { range, leader_hint: g.raft.leader() }));
            return;
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        match g.raft.read_index(ctx, ReadMode::Lease) {
            Ok(()) => {
                self.reads.insert(ctx, PendingRead { range, op, reply, index: None });
                self.touched.insert(range);
            }
            Err(e) => {
                let _ = reply.send(Err(KvError::Unavailable(e.to_string())));
            }
        }
    }

    // ------------------------------------------------------------ the round

    async fn round(&mut self, pause: Pause) -> Result<(), StorageError> {
        // A leader's commit can move in `advance()` (its own entries became durable), which
        // produces another ready: loop until quiet, each iteration one transaction.
        for _ in 0..4 {
            self.status_dirty.extend(self.touched.iter().copied());
            let touched: Vec<RangeId> = std::mem::take(&mut self.touched).into_iter().collect();
            let ready_groups: Vec<RangeId> = touched
                .into_iter()
                .filter(|r| self.groups.get(r).is_some_and(|g| g.raft.has_ready()))
                .collect();
            if ready_groups.is_empty() {
                break;
            }
            self.one_round(&ready_groups, pause).await?;
        }
        Ok(())
    }

    async fn one_round(&mut self, ready_groups: &[RangeId], pause: Pause) -> Result<(), StorageError> {
        let mut readies = Vec::with_capacity(ready_groups.len());
        let mut durable = false;
        let mut entries_written = 0u64;
        let mut applied_results: Vec<(RangeId, LogIndex, Term, Option<CommandResult>)> = Vec::new();
        let storage = self.storage.clone();
        let mut round = storage.begin_round()?;
        let mut early: BTreeMap<NodeId, RaftBatch> = BTreeMap::new();
        for &range in ready_groups {
            let Some(g) = self.groups.get_mut(&range) else { continue };
            let mut rd = g.raft.ready();
            if let Some(snapshot) = &rd.snapshot {
                g.desc = round.install_snapshot(range, snapshot)?;
                g.record.snapshot = Some(snapshot.meta.clone());
                g.record.applied = snapshot.meta.index;
                durable = true;
            }
            if !rd.entries.is_empty() {
                // The core does not need them back: the storage takes them.
                let entries = std::mem::take(&mut rd.entries);
                entries_written += entries.len() as u64;
                round.append_owned(range, entries)?;
                durable = true;
            }
            if let Some(hs) = rd.hard_state {
                if hs.term != g.record.hard_state.term || hs.vote != g.record.hard_state.vote {
                    durable = true;
                }
                g.record.hard_state = hs;
            }
            // A leader's appends may leave before its own fsync (thesis §10.2.1): the leader
            // counts itself towards a commit only after `advance()`, i.e. once durable.
            if self.cfg.early_leader_appends && g.raft.role() == Role::Leader {
                let me = self.cfg.node_id;
                let mut keep = Vec::with_capacity(rd.messages.len());
                for m in std::mem::take(&mut rd.messages) {
                    if matches!(m.body, MessageBody::Append { .. }) && m.term == g.raft.term() {
                        early
                            .entry(m.to)
                            .or_insert_with(|| RaftBatch { from: me, to: m.to, ..RaftBatch::default() })
                            .messages
                            .push((range, m));
                    } else {
                        keep.push(m);
                    }
                }
                rd.messages = keep;
            }
            for entry in &rd.committed_entries {
                let result = match &entry.payload {
                    EntryPayload::Normal(data) => Some(match Command::decode(data) {
                        Some(command) => command.apply(&mut round)?,
                        None => CommandResult::Rejected("undecodable command".into()),
                    }),
                    _ => None,
                };
                g.record.applied = entry.index;
                applied_results.push((range, entry.index, entry.term, result));
            }
            round.put_group(range, &g.record)?;
            readies.push((range, rd));
        }
        let sent_early = !early.is_empty();
        for (_, batch) in std::mem::take(&mut early) {
            metrics::counter!("flotilla_peer_batches_sent_total").increment(1);
            (self.send)(batch);
        }
        if sent_early && pause == Pause::Yield {
            // Sharing the runtime with the network: the appends leave now, not after the fsync.
            tokio::task::yield_now().await;
        }
        let started = self.clock.now();
        let mut pending = round.commit_unsynced(durable)?;
        if pause == Pause::Yield && pending.needs_sync() && entries_written >= OFFLOAD_SYNC_ENTRIES_MIN {
            // A busy node: the network goes on while a pool thread runs the fsync.
            pending = on_pool_thread("the log sync", move || pending.sync().map(|()| pending)).await?;
        } else {
            pending.sync()?;
        }
        pending.finish()?;
        if durable {
            self.step_synced = true;
            metrics::counter!("flotilla_storage_fsyncs_total").increment(1);
            metrics::histogram!("flotilla_storage_entries_per_fsync").record(entries_written as f64);
            metrics::histogram!("flotilla_storage_round_commit_seconds")
                .record(self.clock.now().saturating_sub(started).as_secs_f64());
        }
        metrics::counter!("flotilla_raft_entries_applied_total").increment(applied_results.len() as u64);
        let lag = ready_groups
            .iter()
            .filter_map(|r| self.groups.get(r))
            .map(|g| g.raft.commit_index().0.saturating_sub(g.record.applied.0))
            .max()
            .unwrap_or(0);
        metrics::gauge!("flotilla_raft_apply_lag_entries").set(lag as f64);

        // The round is durable: now messages may leave, and clients may hear back.
        let now = self.clock.now();
        for (range, index, term, result) in applied_results {
            if let Some((proposed_term, proposed_at, reply)) = self.proposals.remove(&(range, index)) {
                // From the driver taking the proposal to its answer: the write's time inside
                // this node (replication and both fsyncs included), without the client's hops.
                metrics::histogram!("flotilla_store_write_seconds")
                    .record(now.saturating_sub(proposed_at).as_secs_f64());
                let answer = if proposed_term == term {
                    Ok(result.unwrap_or(CommandResult::Rejected("not a command entry".into())))
                } else {
                    // Another leader's entry took this index: ours was never committed.
                    Err(KvError::Unavailable("leadership changed before the write committed".into()))
                };
                let _ = reply.send(answer);
            }
        }
        for (range, mut rd) in readies {
            for m in std::mem::take(&mut rd.messages) {
                self.queue_message(range, m);
            }
            if let Some(soft) = rd.soft_state {
                if soft.role == Role::Leader {
                    metrics::counter!("flotilla_raft_elections_won_total").increment(1);
                    if let Some(g) = self.groups.get(&range) {
                        // Tests read these lines to check at most one leader per term.
                        tracing::info!(
                            node = self.cfg.node_id.0,
                            range = range.0,
                            term = g.raft.term().0,
                            "became leader"
                        );
                    }
                }
                if soft.role != Role::Leader {
                    self.fail_pending_reads(range);
                }
            }
            for rs in rd.read_states {
                if let Some(read) = self.reads.get_mut(&rs.ctx) {
                    read.index = Some(rs.index);
                }
            }
            if let Some(g) = self.groups.get_mut(&range) {
                g.raft.advance();
                if g.raft.has_ready() {
                    self.touched.insert(range);
                }
            }
        }
        self.serve_reads();
        self.compact_candidates.extend(ready_groups.iter().copied());
        Ok(())
    }

    /// Writes the applied state collected in memory into the data table when it is due (see
    /// `StoreConfig::checkpoint_interval`), then compacts the logs that may now be compacted.
    /// The checkpoint commits with an fsync of its own: rounds of appends write only the log,
    /// so nothing else would make it durable soon (a checkpoint lost in a crash is harmless —
    /// the groups re-apply from the previous one, whose log entries are still there — but
    /// redb reuses the pages a commit frees only after a durable one).
    async fn maybe_checkpoint(&mut self, pause: Pause) -> Result<(), StorageError> {
        let now = self.clock.now();
        let (bytes, groups) = self.storage.unflushed();
        if groups == 0 {
            self.last_checkpoint = now;
            return Ok(());
        }
        let slices = self.cfg.checkpoint_slices.max(1);
        let whole = bytes >= self.cfg.checkpoint_bytes_max;
        if !whole && now.saturating_sub(self.last_checkpoint) < self.cfg.checkpoint_interval / slices {
            return Ok(());
        }
        let mut round = self.storage.begin_round()?;
        if whole || slices == 1 {
            round.checkpoint();
        } else {
            let phase = self.checkpoint_phase;
            self.checkpoint_phase = (phase + 1) % slices;
            round.checkpoint_ranges(
                self.groups
                    .values()
                    .enumerate()
                    .filter(|(i, _)| *i as u32 % slices == phase)
                    .map(|(_, g)| (g.desc.id, g.desc.start.clone(), g.desc.end.clone())),
            );
        }
        if pause == Pause::Yield {
            // Sharing the runtime with the network: the checkpoint's write and fsync (a few
            // milliseconds) run on a pool thread, the network goes on.
            on_pool_thread("the checkpoint", move || round.commit()).await?;
        } else {
            round.commit()?;
        }
        self.last_checkpoint = now;
        self.step_synced = true;
        metrics::counter!("flotilla_storage_checkpoints_total").increment(1);
        metrics::histogram!("flotilla_storage_checkpoint_bytes").record(bytes as f64);
        metrics::histogram!("flotilla_storage_checkpoint_seconds")
            .record(self.clock.now().saturating_sub(now).as_secs_f64());
        let candidates: Vec<RangeId> = std::mem::take(&mut self.compact_candidates).into_iter().collect();
        self.maybe_compact(&candidates, false)?;
        Ok(())
    }

    fn fail_pending_reads(&mut self, range: RangeId) {
        let leader_hint = self.groups.get(&range).and_then(|g| g.raft.leader());
        let failed: Vec<u64> = self.reads.iter().filter(|(_, r)| r.range == range).map(|(&c, _)| c).collect();
        for ctx in failed {
            if let Some(read) = self.reads.remove(&ctx) {
                let _ = read.reply.send(Err(KvError::NotLeader { range, leader_hint }));
            }
        }
    }

    fn serve_reads(&mut self) {
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| {
                r.index.is_some_and(|i| self.groups.get(&r.range).is_some_and(|g| g.record.applied >= i))
            })
            .map(|(&c, _)| c)
            .collect();
        for ctx in ready {
            let Some(read) = self.reads.remove(&ctx) else { continue };
            let result = match &read.op {
                ReadOp::Get { key } => self.storage.get(key).map(ReadResult::Value),
                ReadOp::Scan { start, end, limit } => {
                    self.storage.scan(start, end, *limit as usize).map(ReadResult::Pairs)
                }
            };
            let _ = read.reply.send(result.map_err(|e| KvError::Storage(e.to_string())));
        }
    }

    /// When the log spans more than `log_segments_max` segments, compacts the groups that keep
    /// the oldest one (checked once per checkpoint slice interval).
    fn release_log_segments(&mut self) -> Result<(), StorageError> {
        let now = self.clock.now();
        let every = self.cfg.checkpoint_interval / self.cfg.checkpoint_slices.max(1);
        if now.saturating_sub(self.last_log_check) < every {
            return Ok(());
        }
        self.last_log_check = now;
        let (log_bytes, log_segments) = self.storage.log_size();
        metrics::gauge!("flotilla_storage_wal_bytes").set(log_bytes as f64);
        metrics::gauge!("flotilla_storage_wal_segments").set(log_segments as f64);
        let pinning = self.storage.groups_pinning_log(self.cfg.log_segments_max);
        if !pinning.is_empty() {
            metrics::counter!("flotilla_storage_wal_forced_compactions_total")
                .increment(pinning.len() as u64);
            self.maybe_compact(&pinning, true)?;
        }
        if self.storage.log_recheck_due() {
            // A round of its own deletes the segments nothing needs (after a restart, or once
            // the last group that needed the oldest one compacted).
            self.storage.begin_round()?.commit_with(false)?;
        }
        Ok(())
    }

    /// Compacts the logs of the given groups, once `2 × log_retain_entries` have been applied
    /// since their last snapshot (or, `force`d, anything) and all of it is checkpointed.
    fn maybe_compact(&mut self, touched: &[RangeId], force: bool) -> Result<(), StorageError> {
        let retain = self.cfg.log_retain_entries;
        let mut compacted = Vec::new();
        for &range in touched {
            let Some(g) = self.groups.get_mut(&range) else { continue };
            let applied = g.record.applied;
            let due = applied.0 >= g.raft.snapshot_index().0 + 2 * retain && applied.0 > retain;
            let forced = force && applied > g.raft.snapshot_index();
            if !due && !forced {
                continue;
            }
            // Only entries whose effects are checkpointed may go.
            if self.storage.durable_applied(range) != applied {
                if !force {
                    self.compact_candidates.insert(range);
                }
                continue;
            }
            // No data: the range's data is the snapshot, read if one is ever sent.
            if let Ok(meta) = g.raft.compact(applied, Vec::new()) {
                g.record.snapshot = Some(meta.clone());
                compacted.push((range, g.record.clone(), meta.index));
            }
        }
        if compacted.is_empty() {
            return Ok(());
        }
        // All of this round's compactions in one transaction, without an fsync: losing it in a
        // crash only leaves a longer log, which the core compacts again. (The round syncs
        // redb after all when it deletes log segments: see `Round::commit_with`.)
        let mut round = self.storage.begin_round()?;
        for (range, record, upto) in &compacted {
            round.put_group(*range, record)?;
            // Refused only past the checkpoint, which was checked above.
            round.truncate_prefix(*range, *upto)?;
        }
        round.commit_with(false)
    }

    // ------------------------------------------------------------ sending

    fn batch_for(&mut self, peer: NodeId) -> &mut RaftBatch {
        let me = self.cfg.node_id;
        self.outbox.entry(peer).or_insert_with(|| RaftBatch { from: me, to: peer, ..RaftBatch::default() })
    }

    fn queue_message(&mut self, range: RangeId, m: Message) {
        let to = m.to;
        if let MessageBody::InstallSnapshot { snapshot } = m.body {
            self.queue_snapshot(range, to, m.term, snapshot);
            return;
        }
        let batch = self.batch_for(to);
        match m.body {
            MessageBody::Heartbeat { commit, read_seq } => {
                batch.heartbeats.push(HeartbeatEntry { range, term: m.term, commit, read_seq });
                metrics::counter!("flotilla_raft_heartbeats_sent_total").increment(1);
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                batch.heartbeat_responses.push(HeartbeatResponseEntry { range, term: m.term, read_seq });
            }
            _ => batch.messages.push((range, m)),
        }
    }

    /// Queues `snapshot` for `to` in chunks (sent a few per round by `flush_outbox`), with its
    /// data read now (`snapshot_to_send`).
    fn queue_snapshot(&mut self, range: RangeId, to: NodeId, term: Term, snapshot: Snapshot) {
        // A snapshot of this range on its way to this peer in this term is not restarted:
        // whatever its index, the peer catches up from it with appends.
        let in_progress =
            self.snapshots_out.get(&(to, range)).and_then(|q| q.front()).is_some_and(|c| c.term == term);
        // Reading the range for a peer presumed dead would be work for nothing on the
        // driver's thread: the core asks again once its snapshot timeout has passed.
        if in_progress || self.peers_dead.contains(&to) {
            return;
        }
        let now = self.clock.now();
        let log_start = self.groups.get(&range).map(|g| g.raft.snapshot_index());
        let reusable = self.snapshots_read.get(&range).filter(|(read_at, read_term, read)| {
            *read_term == term
                && now.saturating_sub(*read_at) < SNAPSHOT_REUSE_FOR
                && log_start.is_some_and(|start| read.meta.index >= start)
        });
        let snapshot = match reusable {
            Some((_, _, read)) => Arc::clone(read),
            None => {
                let Some(read) = self.snapshot_to_send(range, snapshot) else { return };
                let read = Arc::new(read);
                self.snapshots_read.insert(range, (now, term, Arc::clone(&read)));
                read
            }
        };
        let total = snapshot.data.len() as u64;
        let size = self.cfg.snapshot_chunk_bytes.max(1);
        let mut chunks = VecDeque::new();
        let mut offset = 0usize;
        loop {
            let end = (offset + size).min(snapshot.data.len());
            chunks.push_back(SnapshotChunk {
                range,
                term,
                meta: snapshot.meta.clone(),
                offset: offset as u64,
                total,
                bytes: snapshot.data[offset..end].to_vec(),
            });
            offset = end;
            if offset >= snapshot.data.len() {
                break;
            }
        }
        metrics::counter!("flotilla_snapshots_sent_total").increment(1);
        self.snapshots_out.insert((to, range), chunks);
    }

    /// The snapshot the core asked to send, with its data: the range's data and applied index
    /// read in one transaction — a later index than the core's snapshot when entries were
    /// applied since, and then the core's metadata at that index. `None` (logged; the core
    /// asks again after its snapshot timeout) if the read fails.
    fn snapshot_to_send(&self, range: RangeId, requested: Snapshot) -> Option<Snapshot> {
        let g = self.groups.get(&range)?;
        let read_started = self.clock.now();
        let (at, data) = match self.storage.snapshot_range(&g.desc) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(
                    node = self.cfg.node_id.0,
                    range = range.0,
                    "cannot read a snapshot to send: {e}"
                );
                return None;
            }
        };
        metrics::histogram!("flotilla_snapshot_read_seconds")
            .record(self.clock.now().saturating_sub(read_started).as_secs_f64());
        let requested_index = requested.meta.index;
        let meta = if at == requested_index { Some(requested.meta) } else { g.raft.snapshot_meta_at(at) };
        let Some(meta) = meta else {
            tracing::warn!(
                node = self.cfg.node_id.0,
                range = range.0,
                "range data at i{} outside the log's span (snapshot i{}): snapshot not sent",
                at.0,
                requested_index.0
            );
            return None;
        };
        Some(Snapshot { meta, data })
    }

    fn flush_outbox(&mut self) {
        let me = self.cfg.node_id;
        let per_round = self.cfg.snapshot_chunks_per_round.max(1);
        for (&(peer, range), chunks) in self.snapshots_out.iter_mut() {
            let batch = self.outbox.entry(peer).or_insert_with(|| RaftBatch {
                from: me,
                to: peer,
                ..RaftBatch::default()
            });
            while batch.snapshot_chunks.len() < per_round {
                let Some(chunk) = chunks.pop_front() else { break };
                batch.snapshot_chunks.push(chunk);
            }
            // Until the last chunk leaves, the transfer is in progress, not lost.
            if let Some(g) = self.groups.get_mut(&range) {
                g.raft.report_snapshot_progress(peer);
            }
        }
        self.snapshots_out.retain(|_, chunks| !chunks.is_empty());
        if !self.snapshots_read.is_empty() {
            let now = self.clock.now();
            self.snapshots_read
                .retain(|_, (read_at, _, _)| now.saturating_sub(*read_at) < SNAPSHOT_REUSE_FOR);
        }
        for (_, batch) in std::mem::take(&mut self.outbox) {
            metrics::counter!("flotilla_peer_batches_sent_total").increment(1);
            (self.send)(batch);
        }
    }

    /// Refreshes the published status of the groups that changed since the last publish; an
    /// idle node (every group quiesced) does no work here at all.
    fn publish_status(&mut self) {
        self.status_published = self.clock.now();
        let dead: Vec<u64> = self.peers_dead.iter().map(|p| p.0).collect();
        if self.status_dirty.is_empty()
            && self.status_cache.len() == self.groups.len()
            && dead == self.status_dead
        {
            return;
        }
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let refresh: Vec<RangeId> = if self.status_cache.len() == self.groups.len() {
            std::mem::take(&mut self.status_dirty).into_iter().collect()
        } else {
            self.status_dirty.clear();
            self.groups.keys().copied().collect()
        };
        for range in refresh {
            let Some(g) = self.groups.get(&range) else { continue };
            let st = g.raft.status();
            let entry = RangeStatus {
                id: g.desc.id.0,
                start: hex(&g.desc.start),
                end: hex(&g.desc.end),
                term: st.term.0,
                leader: st.leader.map(|l| l.0),
                role: format!("{:?}", st.role).to_lowercase(),
                replicas: st.membership.all_voters().into_iter().map(|n| n.0).collect(),
                applied: g.record.applied.0,
                commit: st.commit.0,
                quiesced: g.quiesced,
                snapshot: g.raft.snapshot_index().0,
                progress: g.raft.progress_summary(),
            };
            if let Ok(mut r) = self.routing.lock() {
                match st.leader {
                    Some(l) => r.leaders.insert(range, l),
                    None => r.leaders.remove(&range),
                };
            }
            self.status_cache.insert(range, entry);
        }
        if let Ok(mut r) = self.routing.lock() {
            r.dead_peers = self.peers_dead.clone();
        }
        self.status_dead = dead.clone();
        let ranges: Vec<RangeStatus> = self.status_cache.values().cloned().collect();
        if let Ok(mut s) = self.status.lock() {
            s.ranges = ranges;
            s.dead_peers = dead;
        }
    }
}

#[cfg(test)]
mod tests;
