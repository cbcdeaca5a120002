//! Durable state of one node: every group's Raft log (in the append-only log of `wal.rs`) and,
//! in one redb database, hard states, range descriptors, the applied index of every group, and
//! the key-value data.
//!
//! A driver round writes its log entries — for *all* groups — as one record of the log: one
//! `pwrite`, one `fdatasync`. Term and vote changes, snapshot installs, checkpoints and
//! compactions go into one redb write transaction, committed *before* the log record (a
//! record may count on a snapshot install of its round; a vote is never lost behind a record).
//! Committed entries are applied into memory (the overlay, see [`Overlay`]) and reach the data
//! table in a checkpoint, together with the applied indexes: after a restart a group re-applies
//! exactly the entries after its stored applied index.
//!
//! Disk access goes through redb's `StorageBackend` trait: files in production, a simulated
//! crashable disk (`SimDisk`) in tests and the simulator, and `FaultyBackend` (see `faulty.rs`)
//! to inject failed fsyncs and full disks. All pass the same conformance tests.
//!
//! Invariants:
//! - a `Round` is all-or-nothing as far as anyone was told: its effects are acknowledged only
//!   after every part of it is durable; a crash midway leaves a prefix (its redb transaction
//!   without its log record) that is itself a valid state;
//! - a group's stored applied index and the data table move together (checkpoint, snapshot
//!   install), and the log is never compacted past the stored applied index;
//! - a failed commit poisons the store (`StorageError::Poisoned`): fsync failures are never
//!   retried, because the kernel may have dropped the dirty pages (the "fsyncgate" lesson);
//! - the log is one record per round (every group's new entries), stored with a CRC-32C; a
//!   mismatch on load is `StorageError::Corrupt` (or, at the very tail, a torn write that was
//!   never acknowledged), never a silently applied entry (format 4);
//! - a log segment is deleted only after a durable redb commit made every record in it dead;
//! - every value is stored with a CRC-32C of its key and value; a mismatch on read is
//!   `StorageError::Corrupt`, never a served value (format 2).

mod faulty;
mod simdisk;
mod wal;
mod writeback;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use faulty::{Faults, FaultyBackend, FaultyLogDir};
pub use simdisk::SimDisk;
pub use wal::{LogDir, WalOptions};
pub use writeback::WritebackBackend;

use crate::ids::{IntMap, RangeId};
use crate::raft::{Entry, HardState, InitialState, LogIndex, NodeId, Snapshot, SnapshotMeta};

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
pub const FORMAT_VERSION: u32 = 4;

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
        redb::Error::Io(io) if is_disk_full(&io) => StorageError::DiskFull(text),
        _ => StorageError::Io(text),
    }
}

/// ENOSPC, whether or not the standard library names it.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull
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
    wal: Arc<std::sync::Mutex<wal::Wal>>,
    /// A redb commit without an fsync has not been followed by one with: log segments may not
    /// be deleted on the strength of it.
    redb_unsynced: Arc<AtomicBool>,
    /// A `PendingCommit` is out: no round may begin until it is finished (the log's next
    /// sequence number moves only then).
    unfinished: Arc<AtomicBool>,
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
    applied: IntMap<u64, LogIndex>,
    /// range → the record as stored in the groups table: its `applied` is the checkpointed one,
    /// its term and vote are always the latest (they are stored the round they change).
    stored: IntMap<u64, StoredRecord>,
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
///
/// Segments are deleted oldest first only, so a record on disk always has every newer record
/// beside it: where a newer record replaced some of its entries (a new leader's suffix), that
/// replacing holds at every load. A record's replaced entries are therefore as good as gone,
/// and a segment may go once every record in it holds, for every range, nothing the range's
/// log still has above its compaction point. (Deleting from the middle would need the stricter
/// rule of format 3: every older record of the range clear as well.)
#[derive(Debug, Default)]
struct LogState {
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Every record on disk: sequence number → the ranges it still counts for.
    records: BTreeMap<u64, Vec<u64>>,
    /// range → record → (first, last): the record's entries for the range that are still
    /// the range's log — none when last < first (newer records replaced them all). By
    /// construction the lasts never decrease from one record to the next.
    by_range: IntMap<u64, BTreeMap<u64, (u64, u64)>>,
    /// range → entries up to this index are compacted away (or replaced by a snapshot).
    compacted: IntMap<u64, u64>,
    /// range → its `GroupRecord::log_from_seq` (storage's own bookkeeping: `put_group` fills
    /// it in, whatever the caller's copy of the record says).
    from_seq: IntMap<u64, u64>,
    /// Every record with a smaller sequence number is clear (holds nothing any range's log still
    /// needs). Clear stays clear — compaction points only rise, replaced entries stay
    /// replaced — so the scan for deletable segments resumes here instead of starting over.
    clear_before: u64,
    /// Look for deletable segments in the next round even without a compaction in it (after a
    /// restart, or when the host found the oldest segment unneeded).
    recheck: bool,
    /// Every group's entries as of the last full read of the log (`LogLoader`), for
    /// `load_group`; valid until a round changes the log.
    loaded: HashMap<u64, Vec<Entry>>,
    loaded_valid: bool,
}

/// Rebuilds every group's entries from the log's records, read once, in order: a record's
/// entries for a range replace that range's entries from their first index on (a new leader's
/// suffix wins); records older than a group's last snapshot install
/// (`GroupRecord::log_from_seq`) do not count for it; entries at or below the group's snapshot
/// are dropped.
struct LogLoader {
    records: HashMap<u64, GroupRecord>,
    entries: HashMap<u64, Vec<Entry>>,
    state: LogState,
}

impl LogLoader {
    fn new(db: &Database) -> Result<LogLoader, StorageError> {
        let txn = db.begin_read().map_err(io)?;
        let groups = txn.open_table(GROUPS).map_err(io)?;
        let mut records: HashMap<u64, GroupRecord> = HashMap::new();
        for row in groups.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            records.insert(k.value(), decode("group record", v.value())?);
        }
        Ok(LogLoader { records, entries: HashMap::new(), state: LogState::default() })
    }

    fn visit(&mut self, seq: u64, body: &[u8]) -> Result<(), StorageError> {
        let record: LogRecord = decode(&format!("log record {seq}"), body)?;
        let mut spans = BTreeMap::new();
        for (range, mut new) in record {
            let Some(last) = new.last() else { continue };
            spans.insert(range, (new[0].index.0, last.index.0));
            let group = self.records.get(&range);
            if group.is_some_and(|r| seq < r.log_from_seq) {
                continue;
            }
            // The record's entries replace everything from its first index on — even when
            // they are all compacted away themselves, their replacing still counts.
            let have = self.entries.entry(range).or_default();
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
                        "log of r{range} has a gap: {} after {} (record {seq})",
                        first.index, prev.index
                    )));
                }
            }
            have.extend(new);
        }
        self.state.add_record(seq, &spans);
        Ok(())
    }

    /// The index of the log's records, and the group records. `next_seq_floor`: what the log
    /// itself says the next sequence number must reach.
    fn finish(self, next_seq_floor: u64) -> (LogState, HashMap<u64, GroupRecord>) {
        let LogLoader { records, mut entries, mut state } = self;
        state.next_seq = state.next_seq.max(next_seq_floor);
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
        // Segments may have become deletable before the restart without being deleted.
        state.recheck = true;
        state.loaded = entries;
        state.loaded_valid = true;
        (state, records)
    }
}

impl std::fmt::Debug for NodeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStorage").field("poisoned", &self.poisoned.load(Ordering::Relaxed)).finish()
    }
}

impl NodeStorage {
    /// Opens (or creates) the database file at `path`, and the log beside it (the directory
    /// `path` with the extension `wal`).
    pub fn open(path: &Path) -> Result<NodeStorage, StorageError> {
        NodeStorage::open_with(path, WalOptions::default())
    }

    /// [`open`](Self::open) with the log's segment sizes given.
    pub fn open_with(path: &Path, opts: WalOptions) -> Result<NodeStorage, StorageError> {
        let db = Database::create(path).map_err(|e| {
            let text = format!("{}: {e}", path.display());
            // redb checks its page checksums when it repairs a file after an unclean shutdown.
            match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => StorageError::Corrupt(text),
                _ => StorageError::Io(text),
            }
        })?;
        NodeStorage::init(db, NodeStorage::log_dir(path, false)?, opts)
    }

    fn log_dir(path: &Path, writeback: bool) -> Result<Arc<dyn LogDir>, StorageError> {
        let dir = path.with_extension("wal");
        let log = wal::FsLogDir::new(dir.clone(), writeback)
            .map_err(|e| StorageError::Io(format!("{}: {e}", dir.display())))?;
        Ok(Arc::new(log))
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
        NodeStorage::init(db, NodeStorage::log_dir(path, true)?, WalOptions::default())
    }

    /// A node's storage in memory (tests, benchmarks).
    pub fn in_memory() -> Result<NodeStorage, StorageError> {
        NodeStorage::with_backend(redb::backends::InMemoryBackend::new())
    }

    /// A database on any redb backend (fault injection), its log in memory.
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<NodeStorage, StorageError> {
        NodeStorage::with_backends(backend, Arc::new(SimDisk::new()), WalOptions::default())
    }

    /// The database on `backend`, the log's segments in `log`.
    pub fn with_backends(
        backend: impl redb::StorageBackend,
        log: Arc<dyn LogDir>,
        opts: WalOptions,
    ) -> Result<NodeStorage, StorageError> {
        let db =
            Database::builder().create_with_backend(backend).map_err(|e| StorageError::Io(e.to_string()))?;
        NodeStorage::init(db, log, opts)
    }

    /// The database and the log on one simulated disk, which crashes them together.
    pub fn on_sim_disk(disk: &SimDisk, opts: WalOptions) -> Result<NodeStorage, StorageError> {
        NodeStorage::with_backends(disk.clone(), Arc::new(disk.clone()), opts)
    }

    fn init(db: Database, log: Arc<dyn LogDir>, opts: WalOptions) -> Result<NodeStorage, StorageError> {
        // Create every table so that read transactions never meet a missing one.
        let txn = db.begin_write().map_err(io)?;
        {
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
                    let found = v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
                    let found = found.map_or_else(|| format!("{v:02x?}"), |f| f.to_string());
                    return Err(StorageError::Mismatch(format!(
                        "the data directory is in storage format {found}, this build reads format \
                         {FORMAT_VERSION} only (format 4 moved the Raft log out of the database \
                         into flotilla.wal/); start this node on an empty data directory and let \
                         it catch up from its peers, or run the build that wrote it"
                    )));
                }
            }
        }
        txn.commit().map_err(io)?;
        let mut loader = LogLoader::new(&db)?;
        let wal = wal::Wal::open(log, opts, |seq, body| loader.visit(seq, body))?;
        let (state, records) = loader.finish(wal.next_seq_floor());
        let overlay = Overlay {
            applied: records.iter().map(|(&r, record)| (r, record.applied)).collect(),
            stored: records
                .iter()
                .map(|(&r, record)| Ok((r, StoredRecord::new(record)?)))
                .collect::<Result<_, StorageError>>()?,
            ..Overlay::default()
        };
        Ok(NodeStorage {
            db: Arc::new(db),
            poisoned: Arc::new(AtomicBool::new(false)),
            log: Arc::new(std::sync::Mutex::new(state)),
            overlay: Arc::new(std::sync::Mutex::new(overlay)),
            wal: Arc::new(std::sync::Mutex::new(wal)),
            redb_unsynced: Arc::new(AtomicBool::new(false)),
            unfinished: Arc::new(AtomicBool::new(false)),
        })
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

    /// When the log spans more than `segments_max` segment files: the groups with live
    /// entries in the oldest one, which keep it on disk.
    /// When none do, the next round looks for segments to delete.
    pub fn groups_pinning_log(&self, segments_max: usize) -> Vec<RangeId> {
        let closed = self.wal().closed_segments();
        let Some(&(_, to)) = closed.first() else { return Vec::new() };
        let mut state = self.log_state();
        let clear_before = state.advance_clear(&[], &[]);
        state.clear_before = clear_before;
        if clear_before >= to {
            state.recheck = true;
            return Vec::new();
        }
        if closed.len() < segments_max {
            return Vec::new();
        }
        state.pinning(clear_before, to).into_iter().map(RangeId).collect()
    }

    /// Whether a round should run to delete log segments (see `groups_pinning_log`).
    /// (It runs only then, not in every round: the host calls this a few times a second.)
    pub fn log_recheck_due(&self) -> bool {
        self.log_state().recheck
    }

    /// Bytes of records in the log and its number of segment files.
    pub fn log_size(&self) -> (u64, usize) {
        self.wal().size()
    }

    fn log_state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, wal::Wal> {
        self.wal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the whole log again (see [`LogLoader`]) for `load_group`, after rounds changed it.
    fn reload_log(&self) -> Result<(), StorageError> {
        let mut loader = LogLoader::new(&self.db)?;
        let wal = self.wal();
        wal.read_all(|seq, body| loader.visit(seq, body))?;
        let (state, _) = loader.finish(wal.next_seq_floor());
        let mut have = self.log_state();
        // The index of live records stays the running one's (it knows which are dead already).
        have.loaded = state.loaded;
        have.loaded_valid = true;
        Ok(())
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
    pub fn begin_round(&self) -> Result<Round, StorageError> {
        self.check_poison()?;
        if self.unfinished.load(Ordering::Acquire) {
            return Err(StorageError::Io("a round began before the previous one's commit finished".into()));
        }
        Ok(Round {
            txn: None,
            storage: self.clone(),
            appended: Vec::new(),
            writes: Writes::new(),
            replaced: Vec::new(),
            groups: BTreeMap::new(),
            installed: IntMap::default(),
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
            self.reload_log()?;
        }
        let entries = self.log_state().loaded.get(&range.0).cloned().unwrap_or_default();
        if let Some(e) = entries.first() {
            if e.index.0 != first {
                return Err(StorageError::Corrupt(format!(
                    "log of {range} starts at {} but its snapshot ends at i{}",
                    e.index,
                    first - 1
                )));
            }
        }
        // The data table reflects `applied`, and every applied entry was durable in the log
        // before it was applied; the log is never compacted past it. A log that ends below it
        // lost records (a deleted or truncated log directory): refuse rather than let Raft
        // accept those indexes again and apply them twice.
        let last = (first - 1) + entries.len() as u64;
        if last < record.applied.0 {
            return Err(StorageError::Corrupt(format!(
                "log of {range} ends at i{last} but its data reflects {}: log records are missing \
                 (was the log directory flotilla.wal/ removed or truncated?)",
                record.applied
            )));
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
    /// Indexes record `seq`, holding entries `first..=last` for each of its ranges: they
    /// replace the range's entries from `first` on in every older record.
    fn add_record(&mut self, seq: u64, spans: &BTreeMap<u64, (u64, u64)>) {
        for (&range, &(first, last)) in spans {
            let seqs = self.by_range.entry(range).or_default();
            for (_, (_, older_last)) in seqs.iter_mut().rev() {
                if *older_last < first {
                    break;
                }
                *older_last = first.saturating_sub(1);
            }
            seqs.insert(seq, (first, last));
        }
        self.records.insert(seq, spans.keys().copied().collect());
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Whether record `seq` holds nothing of `range`'s log above `upto`.
    fn clear(&self, seq: u64, range: u64, upto: u64) -> bool {
        match self.by_range.get(&range).and_then(|seqs| seqs.get(&seq)) {
            None => true,
            Some(&(first, last)) => last < first || last <= upto,
        }
    }

    /// The ranges with something above their compaction point in the records `from..to` (in
    /// the first thousand of them: compacting those lets the scan move on).
    fn pinning(&self, from: u64, to: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for (&seq, ranges) in self.records.range(from..to).take(1_000) {
            for &r in ranges {
                if !self.clear(seq, r, self.compacted.get(&r).copied().unwrap_or(0)) {
                    out.insert(r);
                }
            }
        }
        out
    }

    /// Where `clear_before` gets to once a round with these compactions and snapshot installs
    /// commits: the first record from it on that is not clear then.
    fn advance_clear(&self, compactions: &[(u64, u64)], reset: &[u64]) -> u64 {
        // Each range's compaction point once the round is in: looked up per range of every
        // record walked, so gathered once.
        let mut after: IntMap<u64, u64> = IntMap::default();
        for &(r, index) in compactions {
            let c = after.entry(r).or_insert_with(|| self.compacted.get(&r).copied().unwrap_or(0));
            *c = (*c).max(index);
        }
        let upto = |r: u64| -> u64 {
            if reset.contains(&r) {
                return u64::MAX;
            }
            after.get(&r).or_else(|| self.compacted.get(&r)).copied().unwrap_or(0)
        };
        for (&seq, ranges) in self.records.range(self.clear_before..) {
            if !ranges.iter().all(|&r| self.clear(seq, r, upto(r))) {
                return seq;
            }
        }
        self.next_seq.max(self.clear_before)
    }

    /// The oldest of the `closed` segments (first sequence number, first of the next), in
    /// order, whose every record is below `clear_before`.
    fn dead_segments(closed: &[(u64, u64)], clear_before: u64) -> Vec<(u64, u64)> {
        closed.iter().take_while(|&&(_, to)| to <= clear_before).copied().collect()
    }

    /// Forgets the records of deleted segments.
    fn remove_records(&mut self, from: u64, to: u64) {
        let gone: Vec<u64> = self.records.range(from..to).map(|(&s, _)| s).collect();
        for seq in gone {
            for range in self.records.remove(&seq).unwrap_or_default() {
                if let Some(seqs) = self.by_range.get_mut(&range) {
                    seqs.remove(&seq);
                }
            }
        }
    }

    /// Records older than `seq` hold nothing for `range` any more.
    fn forget_before(&mut self, range: u64, seq: u64) {
        let Some(seqs) = self.by_range.get_mut(&range) else { return };
        let older: Vec<u64> = seqs.range(..seq).map(|(&s, _)| s).collect();
        for s in older {
            seqs.remove(&s);
            if let Some(ranges) = self.records.get_mut(&s) {
                ranges.retain(|&r| r != range);
            }
        }
    }

    /// Follows a committed round: record `seq` holds `spans` (if any), the `deleted` segments
    /// are gone, and the compactions and snapshot installs took effect.
    fn committed(
        &mut self,
        seq: u64,
        spans: &BTreeMap<u64, (u64, u64)>,
        deleted: &[(u64, u64)],
        compactions: &[(u64, u64)],
        reset: &[u64],
    ) {
        if !spans.is_empty() || !compactions.is_empty() || !reset.is_empty() {
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
        for &(from, to) in deleted {
            self.remove_records(from, to);
        }
        if !spans.is_empty() {
            self.add_record(seq, spans);
        }
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
pub struct Round {
    txn: Option<redb::WriteTransaction>,
    /// Its own handle (shared state): a round may be committed on another thread.
    storage: NodeStorage,
    /// The entries appended in this round, written as one record at commit.
    appended: LogRecord,
    /// The key-value writes of the entries applied in this round.
    writes: Writes,
    /// Key spans a snapshot install replaced in this round: older overlay writes in them are
    /// void.
    replaced: Vec<(Vec<u8>, Vec<u8>)>,
    /// range → the host's record as given to `put_group` (in-memory applied index).
    groups: BTreeMap<u64, GroupRecord>,
    /// range → the index of a snapshot installed in this round: the data table now reflects it,
    /// and the range's log restarts with this round's record.
    installed: IntMap<u64, LogIndex>,
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

impl std::fmt::Debug for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Round")
    }
}

impl Round {
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

    /// Checks that the log of `range` may drop its entries up to and including `upto`: refused
    /// past the applied index the data table reflects (after this round), since later entries
    /// are the only durable record of writes not yet checkpointed. In a checkpoint round, call
    /// `checkpoint` first. The entries go with the group record whose snapshot reaches `upto`
    /// (`put_group`): the stored snapshot is the compaction point, at load as at run time.
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
    /// already durable in the log, for checkpoints and for compactions. On failure the store is
    /// poisoned.
    ///
    /// Order: the redb transaction first (term and vote changes, snapshot installs,
    /// checkpoints, compactions), then the round's log record, then the deletion of log
    /// segments that hold nothing needed any more — those only once a durable redb commit has
    /// recorded the compactions that emptied them.
    pub fn commit_with(self, durable: bool) -> Result<(), StorageError> {
        let mut pending = self.commit_unsynced(durable)?;
        pending.sync()?;
        pending.finish()
    }

    /// [`commit_with`](Self::commit_with) up to its log record's fsync: the caller syncs the
    /// returned commit — on this thread or another — and finishes it before the next round
    /// begins. Nothing of the round may be acknowledged before.
    pub fn commit_unsynced(mut self, durable: bool) -> Result<PendingCommit, StorageError> {
        let storage = self.storage.clone();
        let storage = &storage;
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
        // Only the driver commits rounds, so the log index cannot move between this read of it
        // and the update after the commit; its lock is not held over the fsyncs.
        let (seq, from_seq) = {
            let state = storage.log_state();
            // Only the ranges this round stores: the whole map is O(groups) per round.
            let from_seq: IntMap<u64, u64> =
                ranges.iter().filter_map(|r| state.from_seq.get(r).map(|&s| (*r, s))).collect();
            (state.next_seq, from_seq)
        };
        let mut store = Vec::new();
        // Where the logs are compacted once this round is in: at a stored snapshot that moves
        // in it, which is what a load drops entries up to — one source for both.
        let mut compactions: Vec<(u64, u64)> = Vec::new();
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
            record.log_from_seq = if self.installed.contains_key(&range) {
                seq
            } else {
                from_seq.get(&range).copied().unwrap_or(0)
            };
            let durable = DurableFields::of(&record);
            if stored.is_none_or(|s| s.durable != durable) {
                // Only a snapshot that moved is a compaction: a checkpoint or a new term stores
                // the record again with the same one.
                if let Some((index, _)) =
                    durable.snapshot.filter(|&snap| stored.and_then(|s| s.durable.snapshot) != Some(snap))
                {
                    compactions.push((range, index.0));
                }
                store.push((range, StoredRecord::new(&record)?));
            }
        }
        // Ranges whose logs a snapshot replaced in this round.
        let reset: Vec<u64> = self.installed.keys().copied().collect();
        let (dead_segments, clear_before) = {
            let mut state = storage.log_state();
            if compactions.is_empty() && reset.is_empty() && !state.recheck {
                (Vec::new(), None)
            } else {
                state.recheck = false;
                let clear_before = state.advance_clear(&compactions, &reset);
                (LogState::dead_segments(&storage.wal().closed_segments(), clear_before), Some(clear_before))
            }
        };
        // The round's entries: one record at the tail.
        let spans: BTreeMap<u64, (u64, u64)> = self
            .appended
            .iter()
            .filter_map(|(r, es)| Some((*r, (es.first()?.index.0, es.last()?.index.0))))
            .collect();
        // The checkpoint's writes: older overlay writes outside the spans a snapshot replaced
        // in this round, then this round's (a key in both: the round's comes second and wins).
        let replaced = &self.replaced;
        let mut flush = self.checkpoint.select(&overlay.data);
        flush.retain(|(k, _)| !replaced.iter().any(|(s, e)| in_span(k, s, e)));
        flush.extend(self.checkpoint.select(&writes));
        // Segments are deleted only behind a durable redb commit: this one, if need be.
        let redb_durable = durable || !dead_segments.is_empty();
        let needed = self.txn.is_some()
            || !store.is_empty()
            || !flush.is_empty()
            || (!dead_segments.is_empty() && storage.redb_unsynced.load(Ordering::Acquire));
        if needed {
            if let Err(e) = self.write_txn(&store, &flush, redb_durable) {
                storage.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
            storage.redb_unsynced.store(!redb_durable, Ordering::Release);
        }
        drop(flush);
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
        drop(overlay);
        let sync = match self.write_log(seq) {
            Ok(sync) => sync,
            Err(e) => {
                storage.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        };
        storage.unfinished.store(true, Ordering::Release);
        Ok(PendingCommit {
            storage: storage.clone(),
            seq,
            spans,
            dead_segments,
            compactions,
            reset,
            clear_before,
            sync,
            done: false,
        })
    }

    /// Writes the round's log record, if it appended anything, and returns its fsync: a record
    /// is always durable before the next round (a later record's replacing of its entries may
    /// decide which segments are deleted).
    fn write_log(&mut self, seq: u64) -> Result<Option<wal::LogSync>, StorageError> {
        let appended = std::mem::take(&mut self.appended);
        if appended.is_empty() {
            return Ok(None);
        }
        let size_hint: usize = appended
            .iter()
            .flat_map(|(_, entries)| entries)
            .map(|e| match &e.payload {
                crate::raft::EntryPayload::Normal(data) => data.len() + 24,
                _ => 64,
            })
            .sum();
        let frame = wal::encode_frame(seq, &appended, size_hint + 16)?;
        let mut wal = self.storage.wal();
        wal.append(seq, &frame)?;
        metrics::counter!("flotilla_storage_wal_bytes_total").increment(frame.len() as u64);
        Ok(wal.syncer())
    }

    /// Fills and commits the round's redb transaction. `flush` is what a checkpoint writes into
    /// the data table, in order.
    fn write_txn(
        &mut self,
        store: &[(u64, StoredRecord)],
        flush: &[(&Vec<u8>, &Option<Vec<u8>>)],
        durable: bool,
    ) -> Result<(), StorageError> {
        let txn = self.txn()?;
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

/// A round whose redb transaction and log record are written but whose log record is not yet
/// synced (see [`Round::commit_unsynced`]). Dropped unfinished, it poisons the storage: the
/// log's bookkeeping would be behind the log.
#[must_use = "a round is committed only once its commit is synced and finished"]
#[derive(Debug)]
pub struct PendingCommit {
    storage: NodeStorage,
    seq: u64,
    spans: BTreeMap<u64, (u64, u64)>,
    dead_segments: Vec<(u64, u64)>,
    compactions: Vec<(u64, u64)>,
    reset: Vec<u64>,
    clear_before: Option<u64>,
    /// `None` once synced, or when the round wrote no log record.
    sync: Option<wal::LogSync>,
    done: bool,
}

impl PendingCommit {
    /// Whether [`sync`](Self::sync) has an fsync to do.
    pub fn needs_sync(&self) -> bool {
        self.sync.is_some()
    }

    /// Makes the round's log record durable; may run on any thread. On failure the storage is
    /// poisoned (an fsync is never retried).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(sync) = &self.sync {
            if let Err(e) = sync.sync() {
                self.storage.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.sync = None;
        Ok(())
    }

    /// Records the round in the log's bookkeeping and deletes the segments it emptied.
    pub fn finish(mut self) -> Result<(), StorageError> {
        if self.sync.is_some() {
            self.storage.poisoned.store(true, Ordering::Release);
            return Err(StorageError::Io("a round was finished before its log record was synced".into()));
        }
        self.done = true;
        let storage = &self.storage;
        storage.unfinished.store(false, Ordering::Release);
        {
            let mut state = storage.log_state();
            state.committed(self.seq, &self.spans, &self.dead_segments, &self.compactions, &self.reset);
            if let Some(clear_before) = self.clear_before {
                state.clear_before = state.clear_before.max(clear_before);
            }
        }
        if !self.dead_segments.is_empty() {
            let mut wal = storage.wal();
            for &(id, _) in &self.dead_segments {
                // Not fatal: the records are dead, the file only takes space; the next
                // compaction tries again.
                if let Err(e) = wal.remove(id) {
                    tracing::warn!("{e}");
                }
            }
        }
        Ok(())
    }
}

impl Drop for PendingCommit {
    fn drop(&mut self) {
        if !self.done {
            self.storage.poisoned.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests;
