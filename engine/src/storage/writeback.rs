//! A file backend that keeps every write in memory until `sync_data`, for fault-injection tests
//! with real processes: SIGKILL then loses exactly what a power cut would — everything written
//! since the last fsync — instead of leaving it in the kernel's page cache. Enabled only by
//! the test-only `FLOTILLA_TEST_LOSE_UNSYNCED=1` (see `flotilla start`).
//!
//! Reads see the unsynced writes (as the page cache would). A sync applies them to the file
//! in order and then fsyncs it; a crash before that leaves the file as of the previous sync.

use std::fs::File;
use std::io;
use std::sync::{Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::StorageBackend;

#[derive(Debug, Default)]
struct Pending {
    /// (offset, bytes) in the order written.
    writes: Vec<(u64, Vec<u8>)>,
    /// The length set since the last sync, if any.
    len: Option<u64>,
}

#[derive(Debug)]
pub struct WritebackBackend {
    file: FileBackend,
    pending: Mutex<Pending>,
}

impl WritebackBackend {
    pub fn new(file: File) -> Result<WritebackBackend, redb::DatabaseError> {
        Ok(WritebackBackend { file: FileBackend::new(file)?, pending: Mutex::new(Pending::default()) })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StorageBackend for WritebackBackend {
    fn len(&self) -> io::Result<u64> {
        match self.pending().len {
            Some(len) => Ok(len),
            None => self.file.len(),
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let pending = self.pending();
        // What the file has, up to a length set since the last sync.
        let file_len = self.file.len()?.min(pending.len.unwrap_or(u64::MAX));
        let on_file = file_len.saturating_sub(offset).min(out.len() as u64) as usize;
        if on_file > 0 {
            self.file.read(offset, &mut out[..on_file])?;
        }
        out[on_file..].fill(0);
        // Then every unsynced write over it, oldest first.
        let end = offset + out.len() as u64;
        for (at, bytes) in &pending.writes {
            let (w_start, w_end) = (*at, *at + bytes.len() as u64);
            if w_end <= offset || w_start >= end {
                continue;
            }
            let from = w_start.max(offset);
            let to = w_end.min(end);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - w_start) as usize..(to - w_start) as usize]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pending = self.pending();
        // Bytes past a shrink must read as zeros if the file grows again before a sync.
        for (at, bytes) in pending.writes.iter_mut() {
            if *at + bytes.len() as u64 > len {
                bytes.truncate(len.saturating_sub(*at) as usize);
            }
        }
        pending.writes.retain(|(_, bytes)| !bytes.is_empty());
        pending.len = Some(len);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut pending = self.pending();
        if let Some(len) = pending.len {
            self.file.set_len(len)?;
        }
        for (at, bytes) in &pending.writes {
            self.file.write(*at, bytes)?;
        }
        self.file.sync_data()?;
        *pending = Pending::default();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.pending().writes.push((offset, data.to_vec()));
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
}
