//! A simulated disk for crash testing: a redb `StorageBackend` whose unsynced writes are lost
//! when the process "crashes".
//!
//! Every write and resize since the last `sync_data` is recorded in an undo log; `crash()`
//! rolls them back in reverse, leaving exactly the bytes that were synced — what a real disk
//! holds after power loss if the OS kept nothing. Handles carry an incarnation number: after a
//! crash, the old process's handle is detached and every call on it fails, so a dropped
//! database cannot sneak writes in after its "death".

use std::io;
use std::sync::{Arc, Mutex};

use redb::StorageBackend;

#[derive(Debug)]
enum Undo {
    Write { offset: u64, old: Vec<u8> },
    Resize { old_len: u64, tail: Vec<u8> },
}

#[derive(Debug, Default)]
struct DiskState {
    data: Vec<u8>,
    undo: Vec<Undo>,
    incarnation: u64,
    syncs: u64,
    /// The next `sync_data` crashes the process instead of syncing (a crash "at any instant":
    /// mid-round, after some of the round's messages may already have left).
    crash_on_sync: bool,
}

impl DiskState {
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
        self.incarnation += 1;
        self.crash_on_sync = false;
    }
}

/// A handle on a simulated disk, valid for one process incarnation.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    incarnation: u64,
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk { state: Arc::new(Mutex::new(DiskState::default())), incarnation: 0 }
    }

    /// Loses every unsynced change, detaches all existing handles, and returns a handle for the
    /// next incarnation.
    pub fn crash(&self) -> SimDisk {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.roll_back();
        SimDisk { state: self.state.clone(), incarnation: st.incarnation }
    }

    /// Makes the next fsync crash the process: unsynced writes are lost and this handle is
    /// detached; the fsync fails.
    pub fn arm_crash_on_sync(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.crash_on_sync = true;
        }
    }

    /// Whether this handle's process has crashed (by `crash` or an armed fsync).
    pub fn detached(&self) -> bool {
        self.state.lock().map(|st| st.incarnation != self.incarnation).unwrap_or(true)
    }

    /// A handle for the disk's current incarnation (after a crash).
    pub fn reattach(&self) -> SimDisk {
        let incarnation = self.state.lock().map(|st| st.incarnation).unwrap_or(self.incarnation);
        SimDisk { state: self.state.clone(), incarnation }
    }

    pub fn syncs(&self) -> u64 {
        self.state.lock().map(|s| s.syncs).unwrap_or(0)
    }

    fn with<T>(&self, f: impl FnOnce(&mut DiskState) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.state.lock().map_err(|_| io::Error::other("disk lock poisoned"))?;
        if st.incarnation != self.incarnation {
            return Err(io::Error::other("disk detached: the process using it crashed"));
        }
        f(&mut st)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "access beyond the end of the simulated disk")
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        self.with(|st| Ok(st.data.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|st| {
            let at = usize::try_from(offset).map_err(|_| out_of_range())?;
            out.copy_from_slice(st.data.get(at..at + out.len()).ok_or_else(out_of_range)?);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st| {
            let old_len = st.data.len() as u64;
            let new = usize::try_from(len).map_err(|_| out_of_range())?;
            let tail = if len < old_len { st.data[new..].to_vec() } else { Vec::new() };
            st.undo.push(Undo::Resize { old_len, tail });
            st.data.resize(new, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|st| {
            if st.crash_on_sync {
                st.roll_back();
                return Err(io::Error::other("simulated crash during fsync"));
            }
            st.undo.clear();
            st.syncs += 1;
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|st| {
            let at = usize::try_from(offset).map_err(|_| out_of_range())?;
            let target = st.data.get(at..at + data.len()).ok_or_else(out_of_range)?;
            let old = target.to_vec();
            st.undo.push(Undo::Write { offset, old });
            st.data[at..at + data.len()].copy_from_slice(data);
            Ok(())
        })
    }
}
