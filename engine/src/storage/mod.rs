//! Durable state of one node: every group's Raft log and hard state, range descriptors, the
//! applied index of every group, and the key-value data — all in one redb database.
//!
//! Why one redb database for everything (DESIGN §3 allows a separate log file): a driver round
//! then needs exactly one write transaction and one fsync for *all* groups. Committed entries
//! are applied into memory (the overlay, see [`Overlay`]) and reach the data table in a
//! checkpoint, together with the applied indexes: after a restart a group re-applies exactly
//! the entries after its stored applied index. The alternative (a checksummed append-only log
//! file beside redb) is recorded in `docs/storage.md`, with the measurement that now argues
//! for it.
//!
//! Disk access goes through redb's `StorageBackend` trait: a file in production, redb's
//! `InMemoryBackend` in tests and the simulator, and `FaultyBackend` (see `faulty.rs`) to inject
//! failed fsyncs and full disks. All three pass the same conformance tests.
//!
//! Invariants:
//! - a `Round` is all-or-nothing: either every change in it is durable, or none is;
//! - a group's stored applied index and the data table move together (checkpoint, snapshot
//!   install), and the log is never compacted past the stored applied index;
//! - a failed commit poisons the store (`StorageError::Poisoned`): fsync failures are never
//!   retried, because the kernel may have dropped the dirty pages (the "fsyncgate" lesson);
//! - the log is one record per round (every group's new entries), stored with a CRC-32C of
//!   its encoding; a mismatch on load is `StorageError::Corrupt`, never a silently applied
//!   entry (format 3);
//! - every value is stored with a CRC-32C of its key and value; a mismatch on read is
//!   `StorageError::Corrupt`, never a served value (format 2).

mod faulty;
mod simdisk;
mod writeback;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use faulty::{Faults, FaultyBackend};
pub use simdisk::SimDisk;
pub use writeback::WritebackBackend;

use crate::ids::RangeId;
use crate::raft::{Entry, HardState, InitialState, LogIndex, NodeId, Snapshot, SnapshotMeta};

/// Round sequence number → checksummed record of every entry the round appended, for all
/// groups at once (`LogRecord`). One record per round keeps the log's writes sequential: one
/// insert at the tail of one B-tree, however many groups took entries (keying entries by
/// (range, index) dirtied one leaf page per group per round).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log_rounds");
/// range → `GroupRecord`.
const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_groups");
/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// range → `RangeDescriptor`.
const RANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("ranges");
/// user key → value, shared by all ranges (a split only moves a boundary).
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// Node-level facts: "node_id", "cluster", "format".
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// On-disk format version; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A previous commit failed; the node must stop (fsync failures are never retried).
    #[error("storage is poisoned by an earlier failed commit; restart the node")]
    Poisoned,
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("data directory belongs to another node or format: {0}")]
    Mismatch(String),
}

fn io<E: Into<redb::Error>>(e: E) -> StorageError {
    let e: redb::Error = e.into();
    let text = e.to_string();
    match e {
        redb::Error::Corrupted(_) => StorageError::Corrupt(text),
        redb::Error::Io(io) if io.raw_os_error() == Some(28) => StorageError::DiskFull(text),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StorageError::DiskFull(text),
        _ => StorageError::Io(text),
    }
}

/// A range: a contiguous span of keys `[start, end)` (`end` empty = to the end of the keyspace)
/// and the nodes that hold its replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDescriptor {
    pub id: RangeId,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub replicas: Vec<NodeId>,
}

impl RangeDescriptor {
    pub fn contains(&self, key: &[u8]) -> bool {
        in_span(key, &self.start, &self.end)
    }
}

/// The part of the key span `[start, end)` inside the range `[range_start, range_end)`, if any
/// (an empty end is unbounded, in both): what a scan asks of each range.
pub fn span_overlap(
    range_start: &[u8],
    range_end: &[u8],
    start: &[u8],
    end: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    let from = range_start.max(start);
    let to = match (range_end.is_empty(), end.is_empty()) {
        (true, _) => end,
        (false, true) => range_end,
        (false, false) => range_end.min(end),
    };
    (to.is_empty() || from < to).then(|| (from.to_vec(), to.to_vec()))
}

/// What a group needs besides its log to restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub hard_state: HardState,
    /// The last snapshot (installed or taken); entries up to its index are gone from the log.
    pub snapshot: Option<SnapshotMeta>,
    pub applied: LogIndex,
    /// Log records older than this sequence number hold nothing for this group (its log was
    /// replaced by a snapshot when this was the next sequence number). Kept by the storage:
    /// `Round::put_group` sets it, whatever the given record says.
    pub log_from_seq: u64,
}

/// CRC-32C lookup tables for slicing-by-8, built at compile time: `CRC32C_TABLES[0]` is the
/// classic byte-at-a-time table; table `t` advances a byte through `t` more zero bytes, so the
/// loop folds in eight bytes per step with eight independent lookups (about 5x the
/// byte-at-a-time speed; the log record of every round is checksummed on the driver thread).
const CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[t - 1][i];
            tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        t += 1;
    }
    tables
};

/// CRC-32C (Castagnoli), slicing-by-8; keeps dependencies at zero.
pub fn crc32c(bytes: &[u8]) -> u32 {
    !crc32c_update(!0u32, bytes)
}

fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    crc
}

/// The checksum stored after each value: CRC-32C over the key, then the value, so a flipped
/// bit in either — or a value that ended up under another key — is caught on read.
fn value_sum(key: &[u8], value: &[u8]) -> u32 {
    !crc32c_update(crc32c_update(!0u32, key), value)
}

/// A value as stored in the data table: the value, then its 4-byte checksum.
fn seal_value(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&value_sum(key, value).to_le_bytes());
    out
}

/// Checks and strips a stored value's checksum. A mismatch is `Corrupt`: the value is never
/// served, shipped in a snapshot, or built upon.
fn open_value(key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("value of key {key:02x?}: {what}"));
    let split = stored.len().checked_sub(4).ok_or_else(|| corrupt("shorter than its checksum"))?;
    let (value, sum) = stored.split_at(split);
    let sum = u32::from_le_bytes(sum.try_into().map_err(|_| corrupt("bad checksum field"))?);
    if value_sum(key, value) != sum {
        metrics::counter!("flotilla_storage_corrupt_values_total").increment(1);
        return Err(corrupt("checksum mismatch"));
    }
    Ok(value.to_vec())
}

/// A CRC-32C, then the postcard encoding of `value`, encoded in place into a buffer of about
/// `size_hint` bytes (a round's log record is tens of KiB: growing a vector from empty copied
/// it a dozen times).
fn encode_checked<T: Serialize>(value: &T, size_hint: usize) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(size_hint + 4);
    out.extend_from_slice(&[0; 4]);
    let mut out = postcard::to_extend(value, out).map_err(|e| StorageError::Io(format!("encode: {e}")))?;
    let sum = crc32c(&out[4..]);
    out[..4].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

fn decode_checked<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StorageError> {
    let corrupt = |why: &str| StorageError::Corrupt(format!("{what}: {why}"));
    let (sum, body) = bytes.split_at_checked(4).ok_or_else(|| corrupt("shorter than its checksum"))?;
    let sum = u32::from_le_bytes(sum.try_into().map_err(|_| corrupt("bad checksum field"))?);
    if crc32c(body) != sum {
        return Err(corrupt("checksum mismatch"));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(&format!("undecodable: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(value).map_err(|e| StorageError::Io(format!("encode: {e}")))
}

/// The node's database. Cheap to share: reads run concurrently with the driver's writes.
#[derive(Clone)]
pub struct NodeStorage {
    db: Arc<Database>,
    poisoned: Arc<AtomicBool>,
    log: Arc<std::sync::Mutex<LogState>>,
    overlay: Arc<std::sync::Mutex<Overlay>>,
}

/// Key-value writes not in the data table yet, in key order: `None` is a deletion.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What the node has applied but not yet checkpointed into the data table, and what the
/// groups table holds.
///
/// Why: applying each round's entries into the B-tree rewrote a 4 KiB leaf (and its parents)
/// per written key per round — most of a write's disk bytes and much of its CPU. Applied writes
/// now collect here and reach the data table in a checkpoint round (`Round::checkpoint`), many
/// rounds' writes at once; the Raft log is their durable record meanwhile.
///
/// Invariant: a group's stored `applied` (in `stored` and the groups table) always describes
/// the data table — the two move together in one transaction, at a checkpoint or a snapshot
/// install — so a restarted group re-applies exactly the entries after it. The log is never
/// compacted past a group's stored `applied` (`Round::truncate_prefix` refuses).
#[derive(Debug, Default)]
struct Overlay {
    data: Writes,
    /// Bytes of the keys and values in `data`.
    bytes: usize,
    /// range → the host's in-memory applied index (what the data with the overlay on top
    /// reflects). Only the index: a second copy of every record would cost memory per idle
    /// replica.
    applied: HashMap<u64, LogIndex>,
    /// range → the record as stored in the groups table: its `applied` is the checkpointed one,
    /// its term and vote are always the latest (they are stored the round they change).
    stored: HashMap<u64, StoredRecord>,
    /// Ranges whose in-memory applied index is ahead of the stored one.
    pending: std::collections::BTreeSet<u64>,
}

/// A group record as stored: the fields that decide whether it must be rewritten at hand, the
/// rest encoded — a few dozen bytes instead of a struct whose membership sets cost about a KiB
/// per idle replica, and no decoding on a round's path.
#[derive(Debug)]
struct StoredRecord {
    applied: LogIndex,
    durable: DurableFields,
    encoded: Box<[u8]>,
}

/// What of a group record must be durable: everything but the commit index, which Raft learns
/// again after a restart. A snapshot is named by its index and term (same index and term,
/// same membership).
#[derive(Debug, PartialEq, Eq)]
struct DurableFields {
    term: crate::raft::Term,
    vote: Option<NodeId>,
    snapshot: Option<(LogIndex, crate::raft::Term)>,
    applied: LogIndex,
    log_from_seq: u64,
}

impl DurableFields {
    fn of(record: &GroupRecord) -> DurableFields {
        DurableFields {
            term: record.hard_state.term,
            vote: record.hard_state.vote,
            snapshot: record.snapshot.as_ref().map(|s| (s.index, s.term)),
            applied: record.applied,
            log_from_seq: record.log_from_seq,
        }
    }
}

impl StoredRecord {
    fn new(record: &GroupRecord) -> Result<StoredRecord, StorageError> {
        Ok(StoredRecord {
            applied: record.applied,
            durable: DurableFields::of(record),
            encoded: encode(record)?.into_boxed_slice(),
        })
    }

    fn record(&self) -> Result<GroupRecord, StorageError> {
        decode("group record", &self.encoded)
    }
}

impl Overlay {
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let value_len = value.as_ref().map_or(0, Vec::len);
        match self.data.get_mut(&key) {
            Some(old) => {
                self.bytes = self.bytes - old.as_ref().map_or(0, Vec::len) + value_len;
                *old = value;
            }
            None => {
                self.bytes += key.len() + value_len;
                self.data.insert(key, value);
            }
        }
    }

    fn drop_span(&mut self, start: &[u8], end: &[u8]) {
        let keys: Vec<Vec<u8>> = writes_in(&self.data, start, end).map(|(k, _)| k.clone()).collect();
        for key in keys {
            if let Some(value) = self.data.remove(&key) {
                self.bytes -= key.len() + value.as_ref().map_or(0, Vec::len);
            }
        }
    }

    fn note_applied(&mut self, range: u64, applied: LogIndex) {
        let stored = self.stored.get(&range).map_or(LogIndex::ZERO, |s| s.applied);
        if applied == stored {
            self.pending.remove(&range);
        } else {
            self.pending.insert(range);
        }
        self.applied.insert(range, applied);
    }

    /// The host's view of a group's record, rebuilt from the stored one: the in-memory applied
    /// index, and a commit index at least that (every applied entry is committed).
    fn host_record(&self, range: u64) -> Result<Option<GroupRecord>, StorageError> {
        let Some(stored) = self.stored.get(&range) else { return Ok(None) };
        let mut record = stored.record()?;
        if let Some(&applied) = self.applied.get(&range) {
            record.applied = applied;
            record.hard_state.commit = record.hard_state.commit.max(applied);
        }
        Ok(Some(record))
    }
}

/// Whether `key` is in `[start, end)` (`end` empty = unbounded).
fn in_span(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// The entries of `writes` with keys in `[start, end)`.
fn writes_in<'w>(
    writes: &'w Writes,
    start: &[u8],
    end: &[u8],
) -> impl Iterator<Item = (&'w Vec<u8>, &'w Option<Vec<u8>>)> + 'w {
    use std::ops::Bound;
    let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
    writes.range::<[u8], _>((Bound::Included(start), upper))
}

/// What a round appended: (range, entries), the entries of one range contiguous. Entries
/// starting at index i replace that range's entries from i on (a leader's suffix wins).
type LogRecord = Vec<(u64, Vec<Entry>)>;

/// The in-memory index of the log's round records, kept in step with committed rounds.
#[derive(Debug, Default)]
struct LogState {
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Every stored record: range → the last index it holds for that range.
    live: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// The same, by range: range → record → last index.
    by_range: HashMap<u64, BTreeMap<u64, u64>>,
    /// range → entries up to this index are compacted away (or replaced by a snapshot).
    compacted: HashMap<u64, u64>,
    /// range → its `GroupRecord::log_from_seq` (storage's own bookkeeping: `put_group` fills
    /// it in, whatever the caller's copy of the record says).
    from_seq: HashMap<u64, u64>,
    /// Every group's entries as of the last full read of the log (`load_log`), for
    /// `load_group`; valid until a round changes the log.
    loaded: HashMap<u64, Vec<Entry>>,
    loaded_valid: bool,
}

impl std::fmt::Debug for NodeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStorage").field("poisoned", &self.poisoned.load(Ordering::Relaxed)).finish()
    }
}

impl NodeStorage {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<NodeStorage, StorageError> {
        let db = Database::create(path).map_err(|e| {
            let text = format!("{}: {e}", path.display());
            // redb checks its page checksums when it repairs a file after an unclean shutdown.
            match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => StorageError::Corrupt(text),
                _ => StorageError::Io(text),
            }
        })?;
        NodeStorage::init(db)
    }

    /// Like [`open`](Self::open), but every write stays in this process's memory until an
    /// fsync: a killed process then loses what a power cut would. Fault-injection tests only.
    pub fn open_writeback(path: &Path) -> Result<NodeStorage, StorageError> {
        let fail = |e: &dyn std::fmt::Display| StorageError::Io(format!("{}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| fail(&e))?;
        let backend = WritebackBackend::new(file).map_err(|e| fail(&e))?;
        let db = Database::builder().create_with_backend(backend).map_err(|e| fail(&e))?;
        NodeStorage::init(db)
    }

    /// A database in memory (tests, simulator).
    pub fn in_memory() -> Result<NodeStorage, StorageError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StorageError::Io(e.to_string()))?;
        NodeStorage::init(db)
    }

    /// A database on any redb backend (fault injection).
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<NodeStorage, StorageError> {
        let db =
            Database::builder().create_with_backend(backend).map_err(|e| StorageError::Io(e.to_string()))?;
        NodeStorage::init(db)
    }

    fn init(db: Database) -> Result<NodeStorage, StorageError> {
        let storage = NodeStorage {
            db: Arc::new(db),
            poisoned: Arc::new(AtomicBool::new(false)),
            log: Arc::new(std::sync::Mutex::new(LogState::default())),
            overlay: Arc::new(std::sync::Mutex::new(Overlay::default())),
        };
        // Create every table so that read transactions never meet a missing one.
        let txn = storage.db.begin_write().map_err(io)?;
        {
            txn.open_table(LOG).map_err(io)?;
            txn.open_table(GROUPS).map_err(io)?;
            txn.open_table(RANGES).map_err(io)?;
            txn.open_table(DATA).map_err(io)?;
            let mut meta = txn.open_table(META).map_err(io)?;
            let format = meta.get("format").map_err(io)?.map(|v| v.value().to_vec());
            match format {
                None => {
                    meta.insert("format", FORMAT_VERSION.to_le_bytes().as_slice()).map_err(io)?;
                }
                Some(v) if v == FORMAT_VERSION.to_le_bytes() => {}
                Some(v) => {
                    return Err(StorageError::Mismatch(format!(
                        "format {v:?}, this build reads {FORMAT_VERSION}"
                    )))
                }
            }
        }
        txn.commit().map_err(io)?;
        let records = storage.load_log()?;
        {
            let mut overlay = storage.overlay();
            overlay.applied = records.iter().map(|(&r, record)| (r, record.applied)).collect();
            overlay.stored = records
                .iter()
                .map(|(&r, record)| Ok((r, StoredRecord::new(record)?)))
                .collect::<Result<_, _>>()?;
        }
        Ok(storage)
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applied state not yet checkpointed: bytes of keys and values, and how many groups have
    /// an applied index ahead of their stored one. The host checkpoints when either is due.
    pub fn unflushed(&self) -> (usize, usize) {
        let overlay = self.overlay();
        (overlay.bytes, overlay.pending.len())
    }

    /// The applied index the data table reflects for `range` (its last checkpoint or snapshot
    /// install): the log may be compacted up to here, not further.
    pub fn durable_applied(&self, range: RangeId) -> LogIndex {
        self.overlay().stored.get(&range.0).map_or(LogIndex::ZERO, |r| r.applied)
    }

    fn log_state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads every round record once, in order, and rebuilds each group's entries: a record's
    /// entries for a range replace that range's entries from their first index on; records
    /// older than a group's last snapshot install (`GroupRecord::log_from_seq`) do not count
    /// for it; entries at or below the group's snapshot are dropped.
    fn load_log(&self) -> Result<HashMap<u64, GroupRecord>, StorageError> {
        let txn = self.db.begin_read().map_err(io)?;
        let groups = txn.open_table(GROUPS).map_err(io)?;
        let mut records: HashMap<u64, GroupRecord> = HashMap::new();
        for row in groups.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            records.insert(k.value(), decode("group record", v.value())?);
        }
        let log = txn.open_table(LOG).map_err(io)?;
        let mut state = LogState::default();
        let mut entries: HashMap<u64, Vec<Entry>> = HashMap::new();
        for row in log.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let seq = k.value();
            let record: LogRecord = decode_checked(&format!("log record {seq}"), v.value())?;
            let mut lasts = BTreeMap::new();
            for (range, mut new) in record {
                let Some(last) = new.last() else { continue };
                lasts.insert(range, last.index.0);
                let group = records.get(&range);
                if group.is_some_and(|r| seq < r.log_from_seq) {
                    continue;
                }
                // The record's entries replace everything from its first index on — even when
                // they are all compacted away themselves, their replacing still counts.
                let have = entries.entry(range).or_default();
                let keep = have.partition_point(|e| e.index < new[0].index);
                have.truncate(keep);
                // Entries a compaction already dropped may survive in a record another group
                // still needs: skip them, so that a deleted record in between is no gap.
                let upto = group.and_then(|r| r.snapshot.as_ref()).map_or(0, |s| s.index.0);
                new.retain(|e| e.index.0 > upto);
                let Some(first) = new.first() else { continue };
                if let Some(prev) = have.last() {
                    if prev.index.0 > upto && prev.index.next() != first.index {
                        return Err(StorageError::Corrupt(format!(
                            "log of r{range} has a gap: i{} after i{} (record {seq})",
                            first.index, prev.index
                        )));
                    }
                }
                have.extend(new);
            }
            for (&range, &last) in &lasts {
                state.by_range.entry(range).or_default().insert(seq, last);
            }
            state.live.insert(seq, lasts);
            state.next_seq = seq + 1;
        }
        // Records from before a group's snapshot install hold nothing for it.
        for (range, record) in &records {
            state.forget_before(*range, record.log_from_seq);
            state.from_seq.insert(*range, record.log_from_seq);
            // Sequence numbers never go back: records at the tail may have been deleted, but
            // a snapshot install may have pointed past them.
            state.next_seq = state.next_seq.max(record.log_from_seq);
        }
        for (range, record) in &records {
            let upto = record.snapshot.as_ref().map_or(0, |s| s.index.0);
            state.compacted.insert(*range, upto);
            if let Some(have) = entries.get_mut(range) {
                have.retain(|e| e.index.0 > upto);
            }
        }
        state.loaded = entries;
        state.loaded_valid = true;
        *self.log_state() = state;
        Ok(records)
    }

    fn check_poison(&self) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Records which node and cluster this data directory belongs to, or checks it matches.
    pub fn claim(&self, node: NodeId, cluster: &str) -> Result<(), StorageError> {
        let mut round = self.begin_round()?;
        {
            let mut meta = round.txn()?.open_table(META).map_err(io)?;
            let existing = meta.get("node_id").map_err(io)?.map(|v| v.value().to_vec());
            match existing {
                None => {
                    meta.insert("node_id", node.0.to_le_bytes().as_slice()).map_err(io)?;
                    meta.insert("cluster", cluster.as_bytes()).map_err(io)?;
                }
                Some(id) if id == node.0.to_le_bytes() => {
                    let stored =
                        meta.get("cluster").map_err(io)?.map(|v| v.value().to_vec()).unwrap_or_default();
                    if stored != cluster.as_bytes() {
                        return Err(StorageError::Mismatch(format!(
                            "data directory belongs to cluster {:?}, not {cluster:?}",
                            String::from_utf8_lossy(&stored)
                        )));
                    }
                }
                Some(id) => {
                    let id = id.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
                    return Err(StorageError::Mismatch(format!(
                        "data directory belongs to node {id}, not {node}"
                    )));
                }
            }
        }
        round.commit()
    }

    /// Starts the one write transaction of a driver round.
    pub fn begin_round(&self) -> Result<Round<'_>, StorageError> {
        self.check_poison()?;
        Ok(Round {
            txn: None,
            storage: self,
            appended: Vec::new(),
            reset: Vec::new(),
            compactions: Vec::new(),
            writes: Writes::new(),
            replaced: Vec::new(),
            groups: BTreeMap::new(),
            installed: HashMap::new(),
            checkpoint: Checkpoint::None,
        })
    }

    /// Every range this node holds a replica of.
    pub fn ranges(&self) -> Result<Vec<RangeDescriptor>, StorageError> {
        self.check_poison()?;
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(RANGES).map_err(io)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            out.push(decode::<RangeDescriptor>("range descriptor", v.value())?);
        }
        Ok(out)
    }

    /// The durable state a group restarts from. Entries are checked against their checksums and
    /// for contiguity.
    pub fn load_group(&self, range: RangeId) -> Result<Option<(InitialState, GroupRecord)>, StorageError> {
        self.check_poison()?;
        let txn = self.db.begin_read().map_err(io)?;
        let groups = txn.open_table(GROUPS).map_err(io)?;
        let Some(record) = groups.get(range.0).map_err(io)? else { return Ok(None) };
        let record: GroupRecord = decode("group record", record.value())?;
        let first = record.snapshot.as_ref().map_or(0, |s| s.index.0) + 1;
        if !self.log_state().loaded_valid {
            let _ = self.load_log()?;
        }
        let entries = self.log_state().loaded.get(&range.0).cloned().unwrap_or_default();
        if let Some(e) = entries.first() {
            if e.index.0 != first {
                return Err(StorageError::Corrupt(format!(
                    "log of {range} starts at i{} but its snapshot ends at i{}",
                    e.index,
                    first - 1
                )));
            }
        }
        let snapshot = record.snapshot.clone().map(|meta| Snapshot { meta, data: Vec::new() });
        let initial =
            InitialState { hard_state: record.hard_state, snapshot, entries, applied: record.applied };
        Ok(Some((initial, record)))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.check_poison()?;
        let txn = {
            // The overlay is locked while the read transaction begins, so the two agree (a
            // round updates the overlay under this lock, around its commit).
            let overlay = self.overlay();
            if let Some(value) = overlay.data.get(key) {
                return Ok(value.clone());
            }
            self.db.begin_read().map_err(io)?
        };
        let table = txn.open_table(DATA).map_err(io)?;
        let stored = table.get(key).map_err(io)?;
        stored.map(|v| open_value(key, v.value())).transpose()
    }

    /// Up to `limit` pairs with keys in `[start, end)` (`end` empty = unbounded), in key order.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Pairs, StorageError> {
        self.check_poison()?;
        let overlay = self.overlay();
        let txn = self.db.begin_read().map_err(io)?;
        let mut out = Vec::new();
        visit_data(&txn, &overlay.data, start, end, limit, |k, v| out.push((k.to_vec(), v)))?;
        Ok(out)
    }

    /// A consistent copy of a range's data and its applied index (one read transaction), encoded
    /// for `Round::install_snapshot`.
    pub fn snapshot_range(&self, desc: &RangeDescriptor) -> Result<(LogIndex, Vec<u8>), StorageError> {
        let mut pairs = Vec::new();
        let applied = self.read_range(desc, |k, v| pairs.push((k.to_vec(), v)))?;
        Ok((applied, encode(&SnapshotData { descriptor: desc.clone(), pairs })?))
    }

    /// A fingerprint of a range's data at its applied index (one read transaction): replicas
    /// that applied the same entries must agree on it. Every value's checksum is verified.
    pub fn range_digest(&self, desc: &RangeDescriptor) -> Result<RangeDigest, StorageError> {
        let (mut hash, mut keys) = (0xcbf2_9ce4_8422_2325u64, 0u64);
        let applied = self.read_range(desc, |k, value| {
            for part in [k, value.as_slice()] {
                for &b in (part.len() as u64).to_le_bytes().iter().chain(part) {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            keys += 1;
        })?;
        Ok(RangeDigest { range: desc.id, applied, keys, hash })
    }

    /// A range's applied index and every pair in it, read in one transaction (so the two
    /// agree), each value's checksum verified.
    fn read_range(
        &self,
        desc: &RangeDescriptor,
        visit: impl FnMut(&[u8], Vec<u8>),
    ) -> Result<LogIndex, StorageError> {
        self.check_poison()?;
        let overlay = self.overlay();
        let txn = self.db.begin_read().map_err(io)?;
        // The in-memory applied index: what the data, with the overlay on top, reflects.
        let applied = match overlay.applied.get(&desc.id.0) {
            Some(&applied) => applied,
            None => {
                let groups = txn.open_table(GROUPS).map_err(io)?;
                match groups.get(desc.id.0).map_err(io)? {
                    Some(v) => decode::<GroupRecord>("group record", v.value())?.applied,
                    None => LogIndex::ZERO,
                }
            }
        };
        visit_data(&txn, &overlay.data, &desc.start, &desc.end, usize::MAX, visit)?;
        Ok(applied)
    }
}

/// Up to `limit` pairs with keys in `[start, end)` (`end` empty = unbounded), in key order:
/// the data table with the not yet checkpointed `overlay` on top (its writes win, its
/// deletions hide). Each stored value's checksum is verified.
fn visit_data(
    txn: &redb::ReadTransaction,
    overlay: &Writes,
    start: &[u8],
    end: &[u8],
    limit: usize,
    mut visit: impl FnMut(&[u8], Vec<u8>),
) -> Result<(), StorageError> {
    let table = txn.open_table(DATA).map_err(io)?;
    let rows = if end.is_empty() {
        table.range(start..).map_err(io)?
    } else {
        table.range(start..end).map_err(io)?
    };
    let mut newer = writes_in(overlay, start, end).peekable();
    let mut left = limit;
    for row in rows {
        let (k, v) = row.map_err(io)?;
        let key = k.value();
        while let Some((nk, nv)) = newer.next_if(|(nk, _)| nk.as_slice() < key) {
            if let Some(value) = nv {
                if left == 0 {
                    return Ok(());
                }
                visit(nk, value.clone());
                left -= 1;
            }
        }
        if left == 0 {
            return Ok(());
        }
        match newer.next_if(|(nk, _)| nk.as_slice() == key) {
            Some((_, Some(value))) => visit(key, value.clone()),
            Some((_, None)) => continue,
            None => visit(key, open_value(key, v.value())?),
        }
        left -= 1;
    }
    for (nk, nv) in newer {
        if let Some(value) = nv {
            if left == 0 {
                break;
            }
            visit(nk, value.clone());
            left -= 1;
        }
    }
    Ok(())
}

impl LogState {
    /// Records older than `seq` hold nothing for `range` any more.
    fn forget_before(&mut self, range: u64, seq: u64) {
        let Some(seqs) = self.by_range.get_mut(&range) else { return };
        let older: Vec<u64> = seqs.range(..seq).map(|(&s, _)| s).collect();
        for s in older {
            seqs.remove(&s);
            if let Some(l) = self.live.get_mut(&s) {
                l.remove(&range);
            }
        }
    }

    /// Records that may be deleted once a round with these compactions and snapshot installs
    /// commits. A record may go when, for every range in it, it and every older record of
    /// that range hold nothing above the range's compaction point — "every older" because a
    /// record's entries may have been replaced by a newer record's: deleting the newer one
    /// while an older one survives (kept by another range) would bring the replaced entries
    /// back on the next load, unless they are below the compaction point and so skipped.
    fn dead_records(&self, compactions: &[(u64, u64)], reset: &[u64]) -> Vec<u64> {
        if compactions.is_empty() && reset.is_empty() {
            return Vec::new();
        }
        let compacted = |r: u64| -> u64 {
            let base = self.compacted.get(&r).copied().unwrap_or(0);
            compactions.iter().filter(|(x, _)| *x == r).map(|&(_, u)| u).fold(base, u64::max)
        };
        // range → the newest record up to which every record of the range is clear.
        let mut clear: HashMap<u64, Option<u64>> = HashMap::new();
        let mut clear_upto = |r: u64| -> Option<u64> {
            *clear.entry(r).or_insert_with(|| {
                if reset.contains(&r) {
                    return Some(u64::MAX);
                }
                let c = compacted(r);
                let mut upto = None;
                for (&s, &last) in self.by_range.get(&r)?.iter() {
                    if last > c {
                        break;
                    }
                    upto = Some(s);
                }
                upto
            })
        };
        let mut candidates = std::collections::BTreeSet::new();
        for r in compactions.iter().map(|&(r, _)| r).chain(reset.iter().copied()) {
            if let (Some(upto), Some(seqs)) = (clear_upto(r), self.by_range.get(&r)) {
                candidates.extend(seqs.range(..=upto).map(|(&s, _)| s));
            }
        }
        candidates
            .into_iter()
            .filter(|s| {
                self.live
                    .get(s)
                    .is_some_and(|lasts| lasts.keys().all(|&r| clear_upto(r).is_some_and(|u| u >= *s)))
            })
            .collect()
    }
}

/// See [`NodeStorage::range_digest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    pub range: RangeId,
    pub applied: LogIndex,
    pub keys: u64,
    /// FNV-1a over every (key length, key, value length, value) in key order.
    pub hash: u64,
}

/// Checks that snapshot data from a peer decodes and belongs to `range`, before anything acts
/// on it.
pub fn validate_snapshot_data(range: RangeId, data: &[u8]) -> Result<(), StorageError> {
    let decoded: SnapshotData = decode("snapshot data", data)?;
    if decoded.descriptor.id != range {
        return Err(StorageError::Corrupt(format!(
            "snapshot data for {} sent as {range}",
            decoded.descriptor.id
        )));
    }
    Ok(())
}

/// A range's data as shipped in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    descriptor: RangeDescriptor,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The single write transaction of one driver round. Dropping it without `commit` discards it.
///
/// The redb transaction begins only when the round has something for the file: log entries,
/// a changed hard state or snapshot, a snapshot install, a checkpoint. A round that only
/// applies committed entries touches memory only (the overlay).
pub struct Round<'s> {
    txn: Option<redb::WriteTransaction>,
    storage: &'s NodeStorage,
    /// The entries appended in this round, written as one record at commit.
    appended: LogRecord,
    /// Ranges whose logs a snapshot replaced in this round.
    reset: Vec<u64>,
    /// (range, upto) compactions in this round.
    compactions: Vec<(u64, u64)>,
    /// The key-value writes of the entries applied in this round.
    writes: Writes,
    /// Key spans a snapshot install replaced in this round: older overlay writes in them are
    /// void.
    replaced: Vec<(Vec<u8>, Vec<u8>)>,
    /// range → the host's record as given to `put_group` (in-memory applied index).
    groups: BTreeMap<u64, GroupRecord>,
    /// range → the index of a snapshot installed in this round (the data table now reflects it).
    installed: HashMap<u64, LogIndex>,
    /// Which applied changes this round writes into the data table.
    checkpoint: Checkpoint,
}

/// What a round checkpoints: nothing, everything, or some ranges (each with its key span: a
/// range's keys are written only by its own entries, so its span and its applied index can be
/// checkpointed apart from the other ranges').
#[derive(Debug, Default)]
enum Checkpoint {
    #[default]
    None,
    All,
    Ranges(BTreeMap<u64, (Vec<u8>, Vec<u8>)>),
}

impl Checkpoint {
    fn covers_range(&self, range: u64) -> bool {
        match self {
            Checkpoint::None => false,
            Checkpoint::All => true,
            Checkpoint::Ranges(ranges) => ranges.contains_key(&range),
        }
    }

    fn covers_key(&self, key: &[u8]) -> bool {
        match self {
            Checkpoint::None => false,
            Checkpoint::All => true,
            Checkpoint::Ranges(ranges) => ranges.values().any(|(start, end)| in_span(key, start, end)),
        }
    }

    /// The writes of `writes` it covers, in key order per span.
    fn select<'w>(&self, writes: &'w Writes) -> Vec<(&'w Vec<u8>, &'w Option<Vec<u8>>)> {
        match self {
            Checkpoint::None => Vec::new(),
            Checkpoint::All => writes.iter().collect(),
            Checkpoint::Ranges(ranges) => {
                ranges.values().flat_map(|(start, end)| writes_in(writes, start, end)).collect()
            }
        }
    }
}

impl std::fmt::Debug for Round<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Round")
    }
}

impl Round<'_> {
    /// The round's redb transaction, begun on first use.
    fn txn(&mut self) -> Result<&redb::WriteTransaction, StorageError> {
        let txn = match self.txn.take() {
            Some(txn) => txn,
            None => self.storage.db.begin_write().map_err(io)?,
        };
        Ok(self.txn.insert(txn))
    }

    pub fn put_range(&mut self, desc: &RangeDescriptor) -> Result<(), StorageError> {
        let mut t = self.txn()?.open_table(RANGES).map_err(io)?;
        t.insert(desc.id.0, encode(desc)?.as_slice()).map_err(io)?;
        Ok(())
    }

    /// The host's record of a group, its `applied` the in-memory applied index. What reaches
    /// the groups table is decided at commit: the stored `applied` moves only with the data
    /// table (checkpoint, snapshot install), `log_from_seq` is the storage's own, and a record
    /// that differs from the stored one only in its commit index is not rewritten (the commit
    /// index need not be durable; Raft learns it again).
    pub fn put_group(&mut self, range: RangeId, record: &GroupRecord) -> Result<(), StorageError> {
        self.groups.insert(range.0, record.clone());
        Ok(())
    }

    pub fn group(&self, range: RangeId) -> Result<GroupRecord, StorageError> {
        if let Some(record) = self.groups.get(&range.0) {
            return Ok(record.clone());
        }
        Ok(self.storage.overlay().host_record(range.0)?.unwrap_or_default())
    }

    /// Appends entries, replacing everything from `entries[0].index` on (a leader's entries
    /// replace a conflicting suffix). Stored at commit, in the round's one log record.
    pub fn append(&mut self, range: RangeId, entries: &[Entry]) -> Result<(), StorageError> {
        self.append_owned(range, entries.to_vec())
    }

    /// [`append`](Self::append), taking the entries (no copy of their payloads).
    pub fn append_owned(&mut self, range: RangeId, entries: Vec<Entry>) -> Result<(), StorageError> {
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        match self.appended.iter_mut().find(|(r, _)| *r == range.0) {
            Some((_, have)) => {
                // A second append in one round: the later one wins from its first index on.
                let keep = have.partition_point(|e| e.index < first);
                have.truncate(keep);
                have.extend(entries);
            }
            None => self.appended.push((range.0, entries)),
        }
        Ok(())
    }

    /// Drops log entries up to and including `upto`: the records that no group needs any more
    /// are deleted in this round. Refused past the applied index the data table reflects (after
    /// this round): later entries are the only durable record of writes not yet checkpointed.
    /// In a checkpoint round, call `checkpoint` first.
    pub fn truncate_prefix(&mut self, range: RangeId, upto: LogIndex) -> Result<(), StorageError> {
        // What the data table will reflect once this round commits.
        let durable = if self.checkpoint.covers_range(range.0) {
            self.group(range)?.applied
        } else {
            self.storage.durable_applied(range).max(self.installed.get(&range.0).copied().unwrap_or_default())
        };
        if upto > durable {
            return Err(StorageError::Io(format!(
                "cannot compact {range} to i{upto}: only i{durable} is checkpointed"
            )));
        }
        self.compactions.push((range.0, upto.0));
        Ok(())
    }

    /// Writes every applied change into the data table in this round, and each group's
    /// in-memory applied index as its stored one.
    pub fn checkpoint(&mut self) {
        self.checkpoint = Checkpoint::All;
    }

    /// Like [`checkpoint`](Self::checkpoint), for these ranges only, each given with its key
    /// span `[start, end)`: the applied changes in those spans and those groups' applied
    /// indexes. Lets the host spread a checkpoint over several rounds.
    pub fn checkpoint_ranges(&mut self, ranges: impl IntoIterator<Item = (RangeId, Vec<u8>, Vec<u8>)>) {
        match &mut self.checkpoint {
            Checkpoint::All => {}
            Checkpoint::Ranges(have) => have.extend(ranges.into_iter().map(|(r, s, e)| (r.0, (s, e)))),
            none @ Checkpoint::None => {
                *none = Checkpoint::Ranges(ranges.into_iter().map(|(r, s, e)| (r.0, (s, e))).collect());
            }
        }
    }

    /// Replaces a range's log and data with a snapshot received from its leader.
    pub fn install_snapshot(
        &mut self,
        range: RangeId,
        snapshot: &Snapshot,
    ) -> Result<RangeDescriptor, StorageError> {
        let data: SnapshotData = decode("snapshot data", &snapshot.data)?;
        // The range's log restarts after the snapshot: records before this round no longer
        // count for it, and entries this round appended before the install are dropped.
        self.appended.retain(|(r, _)| *r != range.0);
        self.reset.push(range.0);
        let desc = data.descriptor;
        {
            let mut t = self.txn()?.open_table(DATA).map_err(io)?;
            if desc.end.is_empty() {
                t.retain_in(desc.start.as_slice().., |_, _| false).map_err(io)?;
            } else {
                t.retain_in(desc.start.as_slice()..desc.end.as_slice(), |_, _| false).map_err(io)?;
            }
            for (k, v) in &data.pairs {
                t.insert(k.as_slice(), seal_value(k, v).as_slice()).map_err(io)?;
            }
        }
        // Unflushed writes in the span are older than the snapshot: void.
        self.writes.retain(|k, _| !desc.contains(k));
        self.replaced.push((desc.start.clone(), desc.end.clone()));
        self.put_range(&desc)?;
        let mut record = self.group(range)?;
        record.snapshot = Some(snapshot.meta.clone());
        record.applied = snapshot.meta.index;
        record.hard_state.commit = record.hard_state.commit.max(snapshot.meta.index);
        self.installed.insert(range.0, snapshot.meta.index);
        self.put_group(range, &record)?;
        Ok(desc)
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(value) = self.writes.get(key) {
            return Ok(value.clone());
        }
        let replaced = self.replaced.iter().any(|(s, e)| in_span(key, s, e));
        let stored = match &self.txn {
            Some(txn) => {
                if !replaced {
                    if let Some(value) = self.storage.overlay().data.get(key) {
                        return Ok(value.clone());
                    }
                }
                let t = txn.open_table(DATA).map_err(io)?;
                let stored = t.get(key).map_err(io)?;
                stored.map(|v| v.value().to_vec())
            }
            // No snapshot install (it begins the transaction): the overlay counts.
            None => return self.storage.get(key),
        };
        stored.map(|v| open_value(key, &v)).transpose()
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    /// Returns whether the key existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, StorageError> {
        let existed = self.get(key)?.is_some();
        if existed {
            self.writes.insert(key.to_vec(), None);
        }
        Ok(existed)
    }

    /// Makes the round durable (one fsync). On failure the store is poisoned.
    pub fn commit(self) -> Result<(), StorageError> {
        self.commit_with(true)
    }

    /// Commits the round; with `durable == false` without an fsync. Such a commit is visible
    /// to readers at once and becomes durable with the next durable commit; a crash before that
    /// rolls it back as a whole. The host uses it for rounds that only apply entries that are
    /// already durable in the log, and for checkpoints. On failure the store is poisoned.
    pub fn commit_with(mut self, durable: bool) -> Result<(), StorageError> {
        let storage = self.storage;
        let writes = std::mem::take(&mut self.writes);
        // Readers lock the overlay while they begin a read transaction: holding it from here
        // to the overlay's update keeps the two in agreement for them.
        let mut overlay = storage.overlay();
        // The group records to store: see `put_group`.
        let mut ranges: BTreeSet<u64> = self.groups.keys().copied().collect();
        match &self.checkpoint {
            Checkpoint::None => {}
            Checkpoint::All => ranges.extend(overlay.pending.iter().copied()),
            Checkpoint::Ranges(covered) => ranges.extend(covered.keys().copied()),
        }
        // Write transactions are serialized by redb, so the log index cannot move between
        // this read of it and the update after the commit; its lock is not held over the fsync.
        let (seq, dead, from_seq) = {
            let state = storage.log_state();
            let dead = state.dead_records(&self.compactions, &self.reset);
            // Only the ranges this round stores: the whole map is O(groups) per round.
            let from_seq: HashMap<u64, u64> =
                ranges.iter().filter_map(|r| state.from_seq.get(r).map(|&s| (*r, s))).collect();
            (state.next_seq, dead, from_seq)
        };
        let mut store = Vec::new();
        for range in ranges {
            let mut record = match self.groups.get(&range) {
                Some(host) => host.clone(),
                None => match overlay.host_record(range)? {
                    Some(host) => host,
                    None => continue,
                },
            };
            let stored = overlay.stored.get(&range);
            if !self.checkpoint.covers_range(range) {
                record.applied = match self.installed.get(&range) {
                    Some(&index) => index,
                    None => stored.map_or(LogIndex::ZERO, |s| s.applied),
                };
            }
            record.log_from_seq =
                if self.reset.contains(&range) { seq } else { from_seq.get(&range).copied().unwrap_or(0) };
            if stored.is_none_or(|s| s.durable != DurableFields::of(&record)) {
                store.push((range, StoredRecord::new(&record)?));
            }
        }
        // The round's entries: one record at the tail.
        let lasts: BTreeMap<u64, u64> =
            self.appended.iter().filter_map(|(r, es)| es.last().map(|e| (*r, e.index.0))).collect();
        // The checkpoint's writes: older overlay writes outside the spans a snapshot replaced
        // in this round, then this round's (a key in both: the round's comes second and wins).
        let replaced = &self.replaced;
        let mut flush = self.checkpoint.select(&overlay.data);
        flush.retain(|(k, _)| !replaced.iter().any(|(s, e)| in_span(k, s, e)));
        flush.extend(self.checkpoint.select(&writes));
        let needed = self.txn.is_some()
            || !lasts.is_empty()
            || !dead.is_empty()
            || !store.is_empty()
            || !flush.is_empty();
        if needed {
            if let Err(e) = self.write_txn(seq, &lasts, &dead, &store, &flush, durable) {
                storage.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        }
        drop(flush);
        storage.log_state().committed(seq, lasts, &dead, &self.compactions, &self.reset);
        for (start, end) in &self.replaced {
            overlay.drop_span(start, end);
        }
        match &self.checkpoint {
            Checkpoint::All => {
                overlay.data.clear();
                overlay.bytes = 0;
            }
            Checkpoint::Ranges(covered) => {
                for (start, end) in covered.values() {
                    overlay.drop_span(start, end);
                }
            }
            Checkpoint::None => {}
        }
        for (key, value) in writes {
            if !self.checkpoint.covers_key(&key) {
                overlay.write(key, value);
            }
        }
        for (range, record) in store {
            overlay.stored.insert(range, record);
        }
        for (range, host) in std::mem::take(&mut self.groups) {
            overlay.note_applied(range, host.applied);
        }
        let covered: Vec<u64> = match &self.checkpoint {
            Checkpoint::None => Vec::new(),
            Checkpoint::All => overlay.pending.iter().copied().collect(),
            Checkpoint::Ranges(covered) => covered.keys().copied().collect(),
        };
        for range in covered {
            if let Some(&applied) = overlay.applied.get(&range) {
                overlay.note_applied(range, applied);
            }
            assert!(!overlay.pending.contains(&range), "r{range} still unflushed after its checkpoint");
        }
        Ok(())
    }

    /// Fills and commits the round's redb transaction. `flush` is what a checkpoint writes into
    /// the data table, in order.
    fn write_txn(
        &mut self,
        seq: u64,
        lasts: &BTreeMap<u64, u64>,
        dead: &[u64],
        store: &[(u64, StoredRecord)],
        flush: &[(&Vec<u8>, &Option<Vec<u8>>)],
        durable: bool,
    ) -> Result<(), StorageError> {
        let appended = std::mem::take(&mut self.appended);
        let txn = self.txn()?;
        if !lasts.is_empty() || !dead.is_empty() {
            let mut log = txn.open_table(LOG).map_err(io)?;
            if !lasts.is_empty() {
                let size_hint: usize = appended
                    .iter()
                    .flat_map(|(_, entries)| entries)
                    .map(|e| match &e.payload {
                        crate::raft::EntryPayload::Normal(data) => data.len() + 24,
                        _ => 64,
                    })
                    .sum();
                log.insert(seq, encode_checked(&appended, size_hint + 16)?.as_slice()).map_err(io)?;
            }
            for s in dead {
                log.remove(*s).map_err(io)?;
            }
        }
        if !store.is_empty() {
            let mut t = txn.open_table(GROUPS).map_err(io)?;
            for (range, record) in store {
                t.insert(*range, &*record.encoded).map_err(io)?;
            }
        }
        if !flush.is_empty() {
            let mut t = txn.open_table(DATA).map_err(io)?;
            for &(key, value) in flush {
                match value {
                    Some(value) => {
                        t.insert(key.as_slice(), seal_value(key, value).as_slice()).map_err(io)?;
                    }
                    None => {
                        t.remove(key.as_slice()).map_err(io)?;
                    }
                }
            }
        }
        let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        let Some(mut txn) = self.txn.take() else { return Err(StorageError::Io("no transaction".into())) };
        txn.set_durability(durability).map_err(|e| StorageError::Io(e.to_string()))?;
        txn.commit().map_err(io)
    }
}

impl LogState {
    /// Follows a committed round: record `seq` holds `lasts`, the `dead` records are gone, and
    /// the compactions and snapshot installs took effect.
    fn committed(
        &mut self,
        seq: u64,
        lasts: BTreeMap<u64, u64>,
        dead: &[u64],
        compactions: &[(u64, u64)],
        reset: &[u64],
    ) {
        if !lasts.is_empty() || !dead.is_empty() || !compactions.is_empty() || !reset.is_empty() {
            self.loaded_valid = false;
            self.loaded = HashMap::new();
        }
        for &(range, upto) in compactions {
            let c = self.compacted.entry(range).or_insert(0);
            *c = (*c).max(upto);
        }
        for &range in reset {
            // Records from before the install hold nothing this range needs.
            self.forget_before(range, seq);
            self.from_seq.insert(range, seq);
        }
        for s in dead {
            if let Some(in_record) = self.live.remove(s) {
                for range in in_record.keys() {
                    if let Some(seqs) = self.by_range.get_mut(range) {
                        seqs.remove(s);
                    }
                }
            }
        }
        if !lasts.is_empty() {
            for (&range, &last) in &lasts {
                self.by_range.entry(range).or_default().insert(seq, last);
            }
            self.live.insert(seq, lasts);
            self.next_seq = seq + 1;
        }
    }
}

#[cfg(test)]
mod tests;
