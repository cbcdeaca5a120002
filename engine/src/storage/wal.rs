//! The Raft log of every group on the node, as one append-only sequence of round records in
//! segment files (`DATA_DIR/flotilla.wal/<first sequence number>.seg`).
//!
//! Why not in redb (format 3 kept it there): a round's record was one insert at the tail of a
//! B-tree, but redb's commit copied the tail leaf and its parents on every append — about ten
//! `pwrite`s and ~80 KB per round for ~18 KB of entries, 42 % of the driver thread. Here a
//! round is one `pwrite` of its record and one `fdatasync`.
//!
//! A record on disk is a frame: body length (u32 LE), CRC-32C of the sequence number and the
//! body (u32 LE), the sequence number (u64 LE), the body. Sequence numbers strictly increase
//! through a segment and from one segment to the next. Segments grow in `prealloc_bytes` steps
//! of zeros, so that most `fdatasync`s do not also write the file's size; a zero length ends a
//! segment's records.
//!
//! Recovery: a frame that is cut short, fails its checksum or does not follow its predecessor's
//! sequence number can only be the tail of the last segment, written by a round whose fsync
//! never returned (a round is acknowledged only after it) — it is cut off, and the file
//! truncated there. Anywhere else it is `Corrupt`: the node refuses to start rather than lose
//! or invent an entry.
//!
//! Files are reached through [`LogDir`]: a directory in production, the simulated disk
//! (`SimDisk`, crashable) in tests and the simulator, and a fault-injecting wrapper.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use redb::StorageBackend;

use super::{crc32c_update, is_disk_full, StorageError};

/// Where the log's segment files live.
pub trait LogDir: Send + Sync + std::fmt::Debug + 'static {
    /// The ids (first sequence numbers) of the segments present.
    fn segments(&self) -> io::Result<Vec<u64>>;
    /// Opens a segment, creating it (durably: it survives a crash once this returns) if missing.
    fn open_segment(&self, id: u64) -> io::Result<Box<dyn StorageBackend>>;
    fn remove_segment(&self, id: u64) -> io::Result<()>;
}

/// Segment files in a directory.
#[derive(Debug)]
pub struct FsLogDir {
    path: PathBuf,
    /// Keep every write in memory until an fsync (`NodeStorage::open_writeback`).
    writeback: bool,
}

impl FsLogDir {
    pub fn new(path: PathBuf, writeback: bool) -> io::Result<FsLogDir> {
        std::fs::create_dir_all(&path)?;
        Ok(FsLogDir { path, writeback })
    }

    fn file(&self, id: u64) -> PathBuf {
        self.path.join(format!("{id:020}.seg"))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

impl LogDir for FsLogDir {
    fn segments(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                out.push(id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn open_segment(&self, id: u64) -> io::Result<Box<dyn StorageBackend>> {
        let path = self.file(id);
        let created = !path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if created {
            // The new name must survive a crash before anything in the file counts on it.
            file.sync_all()?;
            self.sync_dir()?;
        }
        let fail = |e: redb::DatabaseError| io::Error::other(format!("{}: {e}", path.display()));
        Ok(if self.writeback {
            Box::new(super::WritebackBackend::new(file).map_err(fail)?)
        } else {
            Box::new(redb::backends::FileBackend::new(file).map_err(fail)?)
        })
    }

    fn remove_segment(&self, id: u64) -> io::Result<()> {
        std::fs::remove_file(self.file(id))
    }
}

/// Frame header: body length, checksum, sequence number.
const HEADER: usize = 16;
/// Preallocated zeros are written in pieces of this size (a page).
const ZERO_WRITE_BYTES: usize = 4096;
/// A body longer than this is not a record (a garbled length), whatever its checksum says.
const BODY_MAX: u32 = 1 << 30;

#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// A segment is closed once it holds this much, and a new one begun.
    pub segment_bytes: u64,
    /// Segments grow by this many zero bytes at a time.
    pub prealloc_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 64 << 20, prealloc_bytes: 64 << 10 }
    }
}

#[derive(Debug)]
struct Segment {
    /// Shared with [`LogSync`]s, which sync it from another thread.
    file: Arc<dyn StorageBackend>,
    /// Bytes of records.
    len: u64,
    /// Bytes in the file (records, then zeros).
    capacity: u64,
}

/// One `fdatasync` of the segment that was the log's last when [`Wal::syncer`] was called.
#[derive(Debug)]
pub struct LogSync {
    id: u64,
    file: Arc<dyn StorageBackend>,
}

impl LogSync {
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|e| io_err(&format!("log segment {}", self.id), e))
    }
}

/// The open log: its segments by first sequence number; the last one takes appends.
#[derive(Debug)]
pub struct Wal {
    dir: Arc<dyn LogDir>,
    opts: WalOptions,
    segments: BTreeMap<u64, Segment>,
    /// The sequence number of the last record written.
    last_seq: Option<u64>,
}

fn io_err(what: &str, e: io::Error) -> StorageError {
    if is_disk_full(&e) {
        StorageError::DiskFull(format!("{what}: {e}"))
    } else {
        StorageError::Io(format!("{what}: {e}"))
    }
}

/// A segment's first `len` bytes.
fn read_bytes(file: &dyn StorageBackend, len: u64, what: &str) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    file.read(0, &mut bytes).map_err(|e| io_err(what, e))?;
    Ok(bytes)
}

fn frame_sum(seq: u64, body: &[u8]) -> u32 {
    !crc32c_update(crc32c_update(!0u32, &seq.to_le_bytes()), body)
}

/// Encodes `value` as the frame of record `seq`, in place (`size_hint`: about its size).
pub fn encode_frame<T: serde::Serialize>(
    seq: u64,
    value: &T,
    size_hint: usize,
) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(size_hint + HEADER);
    out.extend_from_slice(&[0; HEADER]);
    let mut out = postcard::to_extend(value, out).map_err(|e| StorageError::Io(format!("encode: {e}")))?;
    let body_len = u32::try_from(out.len() - HEADER)
        .ok()
        .filter(|&l| l <= BODY_MAX)
        .ok_or_else(|| StorageError::Io(format!("log record of {} bytes is too large", out.len())))?;
    let sum = frame_sum(seq, &out[HEADER..]);
    out[..4].copy_from_slice(&body_len.to_le_bytes());
    out[4..8].copy_from_slice(&sum.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    Ok(out)
}

/// The records of one segment's bytes: `(seq, body)` in order, the offset where they end, and
/// whether they end cleanly — at a zero length (the preallocated tail) or at the end of the
/// bytes — rather than at a frame that is cut short, fails its checksum, or does not follow
/// `after` (the sequence number before it).
fn parse(bytes: &[u8], mut after: Option<u64>) -> (Vec<(u64, &[u8])>, usize, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(header) = bytes.get(at..at + HEADER) else {
            // Fewer bytes than a header: a clean end only if nothing (or only zeros) is left.
            let clean = bytes[at..].iter().all(|&b| b == 0);
            return (out, at, clean);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len == 0 {
            return (out, at, true);
        }
        let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
        let body = if len <= BODY_MAX { bytes.get(at + HEADER..at + HEADER + len as usize) } else { None };
        let Some(body) = body else { return (out, at, false) };
        if frame_sum(seq, body) != sum || after.is_some_and(|a| seq <= a) {
            return (out, at, false);
        }
        out.push((seq, body));
        after = Some(seq);
        at += HEADER + len as usize;
    }
}

impl Wal {
    /// Opens the log in `dir`, calling `visit` with every record in order; a torn tail is cut
    /// off (see the module doc).
    pub fn open(
        dir: Arc<dyn LogDir>,
        opts: WalOptions,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<Wal, StorageError> {
        let ids = dir.segments().map_err(|e| io_err("listing log segments", e))?;
        let mut wal = Wal { dir, opts, segments: BTreeMap::new(), last_seq: None };
        for (i, &id) in ids.iter().enumerate() {
            let last = i + 1 == ids.len();
            let what = format!("log segment {id}");
            let file = wal.dir.open_segment(id).map_err(|e| io_err(&what, e))?;
            let capacity = file.len().map_err(|e| io_err(&what, e))?;
            let bytes = read_bytes(&*file, capacity, &what)?;
            let (records, end, clean) = parse(&bytes, wal.last_seq.or(id.checked_sub(1)));
            if !clean && !last {
                return Err(StorageError::Corrupt(format!(
                    "{what}: bad record at byte {end} (checksum, length or order) before the last segment"
                )));
            }
            for (seq, body) in records {
                visit(seq, body)?;
                wal.last_seq = Some(seq);
            }
            let mut capacity = capacity;
            if !clean {
                // A torn tail: never acknowledged. Cut it off, so that nothing of it can pass
                // for a record once new ones are written over its start.
                metrics::counter!("flotilla_storage_wal_torn_tails_total").increment(1);
                file.set_len(end as u64).map_err(|e| io_err(&what, e))?;
                file.sync_data().map_err(|e| io_err(&what, e))?;
                capacity = end as u64;
            }
            wal.segments.insert(id, Segment { file: Arc::from(file), len: end as u64, capacity });
        }
        Ok(wal)
    }

    /// Calls `visit` with every record, in order (what `open` read, re-read).
    pub fn read_all(
        &self,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        for (id, seg) in &self.segments {
            let what = format!("log segment {id}");
            let bytes = read_bytes(&*seg.file, seg.len, &what)?;
            let (records, end, _) = parse(&bytes, None);
            if end as u64 != seg.len {
                return Err(StorageError::Corrupt(format!("{what}: bad record at byte {end}")));
            }
            for (seq, body) in records {
                visit(seq, body)?;
            }
        }
        Ok(())
    }

    /// The sequence number every new record must exceed... or reach: the id of the last segment
    /// (it may be empty) and the last record's.
    pub fn next_seq_floor(&self) -> u64 {
        let last_record = self.last_seq.map_or(0, |s| s + 1);
        let last_segment = self.segments.keys().next_back().copied().unwrap_or(0);
        last_record.max(last_segment)
    }

    /// Writes a record's frame (from [`encode_frame`]) after the last one, in a new segment if
    /// the last is full. Not durable until synced (see [`syncer`](Self::syncer)).
    pub fn append(&mut self, seq: u64, frame: &[u8]) -> Result<(), StorageError> {
        assert!(self.last_seq.is_none_or(|l| seq > l), "log record {seq} after {:?}", self.last_seq);
        let full = self
            .segments
            .values()
            .next_back()
            .is_none_or(|s| s.len > 0 && s.len + frame.len() as u64 > self.opts.segment_bytes);
        if full {
            // The closing segment is synced now (a round that wrote to it without an fsync
            // would otherwise never be); a new segment's first sequence number is its name.
            if let Some(closing) = self.syncer() {
                closing.sync()?;
            }
            let what = format!("log segment {seq}");
            let file = self.dir.open_segment(seq).map_err(|e| io_err(&what, e))?;
            let capacity = file.len().map_err(|e| io_err(&what, e))?;
            if capacity > 0 {
                return Err(StorageError::Corrupt(format!("{what} exists already ({capacity} bytes)")));
            }
            self.segments.insert(seq, Segment { file: Arc::from(file), len: 0, capacity: 0 });
            metrics::counter!("flotilla_storage_wal_segments_created_total").increment(1);
        }
        let Some((&id, seg)) = self.segments.iter_mut().next_back() else {
            return Err(StorageError::Io("no log segment".into()));
        };
        // Named only on failure: this runs for every round.
        let fail = |e| io_err(&format!("log segment {id}"), e);
        let end = seg.len + frame.len() as u64;
        seg.file.write(seg.len, frame).map_err(fail)?;
        if end > seg.capacity {
            // Grow the file by whole steps of zeros, written a page at a time: the page cache
            // sizes its folios by the write, and a record's fdatasync writes back (and
            // `/proc/*/io` counts) the whole folio it dirtied.
            let step = self.opts.prealloc_bytes.max(1);
            let capacity = end.div_ceil(step) * step;
            let zeros = [0u8; ZERO_WRITE_BYTES];
            let mut at = end;
            while at < capacity {
                let upto = (at / ZERO_WRITE_BYTES as u64 + 1) * ZERO_WRITE_BYTES as u64;
                let n = (upto.min(capacity) - at) as usize;
                seg.file.write(at, &zeros[..n]).map_err(fail)?;
                at += n as u64;
            }
            seg.capacity = capacity;
        }
        seg.len = end;
        self.last_seq = Some(seq);
        Ok(())
    }

    /// The fsync that makes every record appended so far durable: one `fdatasync` of the last
    /// segment (earlier ones were synced when it began). A handle, so that it may run on
    /// another thread without the log's lock; `None` before the first segment.
    pub fn syncer(&self) -> Option<LogSync> {
        let (&id, seg) = self.segments.iter().next_back()?;
        Some(LogSync { id, file: Arc::clone(&seg.file) })
    }

    /// Every segment but the last, as (first sequence number, first number of the next).
    pub fn closed_segments(&self) -> Vec<(u64, u64)> {
        let ids: Vec<u64> = self.segments.keys().copied().collect();
        ids.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Deletes a closed segment. Only once nothing in it is needed, durably (see `Round::commit`).
    pub fn remove(&mut self, id: u64) -> Result<(), StorageError> {
        if self.segments.keys().next_back() == Some(&id) {
            return Err(StorageError::Io(format!("log segment {id} is the one being written")));
        }
        if let Some(seg) = self.segments.remove(&id) {
            drop(seg);
            self.dir.remove_segment(id).map_err(|e| io_err(&format!("removing log segment {id}"), e))?;
            metrics::counter!("flotilla_storage_wal_segments_removed_total").increment(1);
        }
        Ok(())
    }

    /// Bytes of records in all segments, and the number of segments.
    pub fn size(&self) -> (u64, usize) {
        (self.segments.values().map(|s| s.len).sum(), self.segments.len())
    }
}
