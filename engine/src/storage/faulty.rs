//! A redb `StorageBackend` wrapper that injects disk faults: failed fsyncs and a full disk.
//!
//! It also counts fsyncs, which is how tests check group commit (one fsync per driver round,
//! whatever the number of groups).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::StorageBackend;

/// Switches shared between a test and the backend it wraps.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every `sync_data` fails while set.
    pub fail_sync: AtomicBool,
    /// Writes or growth past this many bytes fail with "no space left on device" (0 = no limit).
    pub capacity_bytes: AtomicU64,
    /// Successful `sync_data` calls so far.
    pub syncs: AtomicU64,
    /// The backend's size after the last successful `set_len`.
    pub len_bytes: AtomicU64,
}

impl Faults {
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

pub struct FaultyBackend {
    inner: Box<dyn StorageBackend>,
    faults: Arc<Faults>,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend").field("faults", &self.faults).finish()
    }
}

impl FaultyBackend {
    pub fn new(inner: impl StorageBackend, faults: Arc<Faults>) -> FaultyBackend {
        FaultyBackend { inner: Box::new(inner), faults }
    }

    fn check_space(&self, end: u64) -> io::Result<()> {
        let capacity = self.faults.capacity_bytes.load(Ordering::SeqCst);
        if capacity > 0 && end > capacity {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_space(len)?;
        self.inner.set_len(len)?;
        self.faults.len_bytes.store(len, Ordering::SeqCst);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()?;
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_space(offset.saturating_add(data.len() as u64))?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}

/// A log directory whose segment files inject the same faults (and count their fsyncs in the
/// same `Faults`).
#[derive(Debug)]
pub struct FaultyLogDir {
    inner: Arc<dyn super::wal::LogDir>,
    faults: Arc<Faults>,
}

impl FaultyLogDir {
    pub fn new(inner: Arc<dyn super::wal::LogDir>, faults: Arc<Faults>) -> FaultyLogDir {
        FaultyLogDir { inner, faults }
    }
}

impl super::wal::LogDir for FaultyLogDir {
    fn segments(&self) -> io::Result<Vec<u64>> {
        self.inner.segments()
    }

    fn open_segment(&self, id: u64) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(FaultyBackend { inner: self.inner.open_segment(id)?, faults: self.faults.clone() }))
    }

    fn remove_segment(&self, id: u64) -> io::Result<()> {
        self.inner.remove_segment(id)
    }
}
