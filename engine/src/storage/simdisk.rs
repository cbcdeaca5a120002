//! A simulated disk for crash testing: the redb file and the log's segment files, whose
//! unsynced writes are lost when the process "crashes".
//!
//! Every write and resize of a file since its last `sync_data` is recorded in that file's undo
//! log; `crash()` rolls every file back in reverse, leaving exactly the bytes that were synced
//! — what a real disk holds after power loss if the OS kept nothing. Creating and removing a
//! segment file is durable at once (the real directory is fsynced after a create; a removal
//! that a crash undid would only bring back records the log no longer needs). Handles carry an
//! incarnation number: after a crash, the old process's handles are detached and every call on
//! them fails, so a dropped database cannot sneak writes in after its "death".

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use redb::StorageBackend;

use super::wal::LogDir;

#[derive(Debug)]
enum Undo {
    Write { offset: u64, old: Vec<u8> },
    Resize { old_len: u64, tail: Vec<u8> },
}

#[derive(Debug, Default)]
struct FileState {
    data: Vec<u8>,
    undo: Vec<Undo>,
}

impl FileState {
    fn roll_back(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Write { offset, old } => {
                    let at = offset as usize;
                    if let Some(target) = self.data.get_mut(at..at + old.len()) {
                        target.copy_from_slice(&old);
                    }
                }
                Undo::Resize { old_len, tail } => {
                    self.data.truncate(old_len as usize - tail.len().min(old_len as usize));
                    self.data.extend_from_slice(&tail);
                    self.data.resize(old_len as usize, 0);
                }
            }
        }
    }
}

/// Which file of the disk a handle is on: the database, or a log segment.
type FileId = Option<u64>;

#[derive(Debug, Default)]
struct DiskState {
    files: BTreeMap<FileId, FileState>,
    incarnation: u64,
    syncs: u64,
    /// A coming `sync_data` crashes the process instead of syncing (a crash "at any instant":
    /// mid-round, after some of the round's messages may already have left): the one after
    /// this many more.
    crash_on_sync: Option<u32>,
}

impl DiskState {
    fn roll_back(&mut self) {
        for file in self.files.values_mut() {
            file.roll_back();
        }
        self.incarnation += 1;
        self.crash_on_sync = None;
    }
}

/// A handle on a simulated disk, valid for one process incarnation. As a `StorageBackend` it
/// is the database file; as a [`LogDir`] it holds the log's segments.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    incarnation: u64,
    file: FileId,
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk { state: Arc::new(Mutex::new(DiskState::default())), incarnation: 0, file: None }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses every unsynced change, detaches all existing handles, and returns a handle for the
    /// next incarnation.
    pub fn crash(&self) -> SimDisk {
        let mut st = self.lock();
        st.roll_back();
        SimDisk { state: self.state.clone(), incarnation: st.incarnation, file: None }
    }

    /// Makes the fsync after `skip` more crash the process: unsynced writes are lost and every
    /// handle is detached; the fsync fails. (A round syncs redb, then its log record: skipping
    /// lands the crash between them.)
    pub fn arm_crash_on_sync(&self, skip: u32) {
        self.lock().crash_on_sync = Some(skip);
    }

    /// Whether this handle's process has crashed (by `crash` or an armed fsync).
    pub fn detached(&self) -> bool {
        self.lock().incarnation != self.incarnation
    }

    /// A handle for the disk's current incarnation (after a crash).
    pub fn reattach(&self) -> SimDisk {
        let incarnation = self.lock().incarnation;
        SimDisk { state: self.state.clone(), incarnation, file: None }
    }

    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn with<T>(&self, f: impl FnOnce(&mut DiskState) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.lock();
        if st.incarnation != self.incarnation {
            return Err(io::Error::other("disk detached: the process using it crashed"));
        }
        f(&mut st)
    }

    fn with_file<T>(&self, f: impl FnOnce(&mut FileState) -> io::Result<T>) -> io::Result<T> {
        let file = self.file;
        self.with(|st| f(st.files.entry(file).or_default()))
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "access beyond the end of the simulated file")
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        self.with_file(|f| Ok(f.data.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with_file(|f| {
            let at = usize::try_from(offset).map_err(|_| out_of_range())?;
            out.copy_from_slice(f.data.get(at..at + out.len()).ok_or_else(out_of_range)?);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_file(|f| {
            let old_len = f.data.len() as u64;
            let new = usize::try_from(len).map_err(|_| out_of_range())?;
            let tail = if len < old_len { f.data[new..].to_vec() } else { Vec::new() };
            f.undo.push(Undo::Resize { old_len, tail });
            f.data.resize(new, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let file = self.file;
        self.with(|st| {
            match st.crash_on_sync {
                Some(0) => {
                    st.roll_back();
                    return Err(io::Error::other("simulated crash during fsync"));
                }
                Some(n) => st.crash_on_sync = Some(n - 1),
                None => {}
            }
            st.files.entry(file).or_default().undo.clear();
            st.syncs += 1;
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with_file(|f| {
            let at = usize::try_from(offset).map_err(|_| out_of_range())?;
            // Writes past the end grow the file (as a real file does).
            if f.data.len() < at + data.len() {
                let old_len = f.data.len() as u64;
                f.undo.push(Undo::Resize { old_len, tail: Vec::new() });
                f.data.resize(at + data.len(), 0);
            }
            let old = f.data[at..at + data.len()].to_vec();
            f.undo.push(Undo::Write { offset, old });
            f.data[at..at + data.len()].copy_from_slice(data);
            Ok(())
        })
    }
}

impl LogDir for SimDisk {
    fn segments(&self) -> io::Result<Vec<u64>> {
        self.with(|st| Ok(st.files.keys().filter_map(|&f| f).collect()))
    }

    fn open_segment(&self, id: u64) -> io::Result<Box<dyn StorageBackend>> {
        self.with(|st| {
            st.files.entry(Some(id)).or_default();
            Ok(())
        })?;
        Ok(Box::new(SimDisk { state: self.state.clone(), incarnation: self.incarnation, file: Some(id) }))
    }

    fn remove_segment(&self, id: u64) -> io::Result<()> {
        self.with(|st| {
            st.files.remove(&Some(id));
            Ok(())
        })
    }
}
