//! The seam between the RESP gateway and the cluster: [`KvBackend`], and [`MemBackend`], its
//! in-memory twin for tests and examples.
//!
//! The trait is deliberately small: single-key reads and conditional writes, a multi-key delete,
//! the two read-modify-write operations Redis clients rely on being atomic (INCRBY, APPEND), an
//! ordered range scan, and INFO lines. Everything else the gateway offers (MGET, MSET, EXISTS,
//! STRLEN, SCAN cursors and MATCH) is composed from these in [`super::command`].
//!
//! Futures are boxed by hand (no `async-trait` dependency) so the trait stays object safe and
//! the gateway can hold an `Arc<dyn KvBackend>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};

use thiserror::Error;

use super::VALUE_BYTES_MAX;

/// A boxed, sendable future borrowing from `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keys with their values, in ascending key order: one [`KvBackend::scan`] page.
pub type ScanPage = Vec<(Vec<u8>, Vec<u8>)>;

/// Errors a backend returns; the gateway maps them to Redis-style `-ERR ...` replies.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No leader, a timeout, a range moving: the client may retry the same command.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A key or value over a limit (an APPEND result, say).
    #[error("{0}")]
    TooLarge(String),
    /// The operation does not apply to the stored value (INCR on a non-integer). The message is
    /// sent to the client as is, after `ERR `.
    #[error("{0}")]
    Invalid(String),
    /// A bug or an unexpected storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// When a SET takes effect (`NX` = `IfAbsent`, `XX` = `IfPresent`): the engine's own type, so
/// the gateway and the range state machine cannot drift apart.
pub use flotilla_engine::kv::SetCondition;

/// What the gateway needs from the cluster.
///
/// To ensure correctness, an implementation must:
/// - make `set` with a condition, `incr_by` and `append` atomic with respect to every other
///   operation on the same key (Redis clients build counters and locks on them);
/// - return `scan` results in ascending byte order of keys, all within `[start, end)`, so the
///   gateway's cursor (the successor of the last key returned) never skips or repeats a key
///   that was present for the whole iteration;
/// - report retryable conditions as [`BackendError::Unavailable`] and nothing else as such.
pub trait KvBackend: Send + Sync + 'static {
    /// The value stored at `key`, if any.
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, BackendError>>;

    /// Stores `value` at `key` if `cond` holds. Returns whether the write happened (false when
    /// the condition failed).
    fn set(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCondition,
    ) -> BoxFuture<'_, Result<bool, BackendError>>;

    /// Removes the keys. Returns how many of them existed.
    fn delete(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<u64, BackendError>>;

    /// Atomic add; a missing key counts as 0; a value that is not a decimal i64 is
    /// `BackendError::Invalid("value is not an integer or out of range")`. Returns the new value.
    fn incr_by(&self, key: Vec<u8>, delta: i64) -> BoxFuture<'_, Result<i64, BackendError>>;

    /// Atomic append (a missing key counts as empty). Returns the new length.
    fn append(&self, key: Vec<u8>, suffix: Vec<u8>) -> BoxFuture<'_, Result<u64, BackendError>>;

    /// Keys in `[start, end)` (`end` None = to the end of the keyspace), at most `limit`, in
    /// ascending order, with their values.
    fn scan(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'_, Result<ScanPage, BackendError>>;

    /// `name:value` lines for INFO (e.g. `role`, `node_id`), shown under a `# Flotilla` section.
    fn info(&self) -> BoxFuture<'_, Vec<(String, String)>>;
}

/// Message for a value that is not an integer, shared with the command layer (Redis's wording).
pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";

/// Message for an increment that would leave the i64 range (Redis's wording).
pub const INCREMENT_OVERFLOW: &str = "increment or decrement would overflow";

/// A [`KvBackend`] over a `BTreeMap` behind a mutex: single node, not durable, every operation
/// trivially atomic. The lock is never held across an `.await` (each future does its work on its
/// first poll).
#[derive(Debug, Default)]
pub struct MemBackend {
    entries: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A poisoned lock means a panic mid-operation elsewhere; every operation here leaves the map
    /// valid at each step, so the data is still usable.
    fn entries(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KvBackend for MemBackend {
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(async move { Ok(self.entries().get(&key).cloned()) })
    }

    fn set(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCondition,
    ) -> BoxFuture<'_, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut entries = self.entries();
            let exists = entries.contains_key(&key);
            let write = match cond {
                SetCondition::Always => true,
                SetCondition::IfAbsent => !exists,
                SetCondition::IfPresent => exists,
            };
            if write {
                entries.insert(key, value);
            }
            Ok(write)
        })
    }

    fn delete(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            let mut entries = self.entries();
            let removed = keys.iter().filter(|key| entries.remove(*key).is_some()).count();
            Ok(removed as u64)
        })
    }

    fn incr_by(&self, key: Vec<u8>, delta: i64) -> BoxFuture<'_, Result<i64, BackendError>> {
        Box::pin(async move {
            let mut entries = self.entries();
            let current = match entries.get(&key) {
                None => 0,
                Some(value) => super::parse_integer(value)
                    .ok_or_else(|| BackendError::Invalid(NOT_AN_INTEGER.to_owned()))?,
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| BackendError::Invalid(INCREMENT_OVERFLOW.to_owned()))?;
            entries.insert(key, next.to_string().into_bytes());
            Ok(next)
        })
    }

    fn append(&self, key: Vec<u8>, suffix: Vec<u8>) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            let mut entries = self.entries();
            let value = entries.entry(key).or_default();
            if value.len() + suffix.len() > VALUE_BYTES_MAX {
                return Err(BackendError::TooLarge(format!(
                    "string exceeds maximum allowed size ({VALUE_BYTES_MAX} bytes)"
                )));
            }
            value.extend_from_slice(&suffix);
            Ok(value.len() as u64)
        })
    }

    fn scan(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'_, Result<ScanPage, BackendError>> {
        Box::pin(async move {
            if end.as_ref().is_some_and(|end| *end <= start) {
                return Ok(Vec::new());
            }
            let upper = match &end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            };
            let entries = self.entries();
            let page = entries
                .range::<[u8], _>((Bound::Included(start.as_slice()), upper))
                .take(limit)
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            Ok(page)
        })
    }

    fn info(&self) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move {
            vec![("role".to_owned(), "memory".to_owned()), ("keys".to_owned(), self.len().to_string())]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls a future that is ready on its first poll, as every `MemBackend` future is.
    fn now<T>(future: BoxFuture<'_, T>) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread().build();
        match runtime {
            Ok(runtime) => runtime.block_on(future),
            Err(error) => panic!("runtime: {error}"),
        }
    }

    #[test]
    fn conditional_sets() {
        let backend = MemBackend::new();
        assert_eq!(now(backend.set(b"k".to_vec(), b"1".to_vec(), SetCondition::IfPresent)), Ok(false));
        assert_eq!(now(backend.set(b"k".to_vec(), b"1".to_vec(), SetCondition::IfAbsent)), Ok(true));
        assert_eq!(now(backend.set(b"k".to_vec(), b"2".to_vec(), SetCondition::IfAbsent)), Ok(false));
        assert_eq!(now(backend.set(b"k".to_vec(), b"3".to_vec(), SetCondition::IfPresent)), Ok(true));
        assert_eq!(now(backend.get(b"k".to_vec())), Ok(Some(b"3".to_vec())));
        assert_eq!(now(backend.delete(vec![b"k".to_vec(), b"k".to_vec(), b"x".to_vec()])), Ok(1));
        assert!(backend.is_empty());
    }

    #[test]
    fn incr_by_and_append() {
        let backend = MemBackend::new();
        assert_eq!(now(backend.incr_by(b"n".to_vec(), 5)), Ok(5));
        assert_eq!(now(backend.incr_by(b"n".to_vec(), -7)), Ok(-2));
        assert_eq!(
            now(backend.incr_by(b"n".to_vec(), i64::MIN)),
            Err(BackendError::Invalid(INCREMENT_OVERFLOW.to_owned()))
        );
        assert_eq!(now(backend.append(b"s".to_vec(), b"ab".to_vec())), Ok(2));
        assert_eq!(now(backend.append(b"s".to_vec(), b"c".to_vec())), Ok(3));
        assert_eq!(
            now(backend.incr_by(b"s".to_vec(), 1)),
            Err(BackendError::Invalid(NOT_AN_INTEGER.to_owned()))
        );
        assert!(matches!(
            now(backend.append(b"s".to_vec(), vec![0; VALUE_BYTES_MAX])),
            Err(BackendError::TooLarge(_))
        ));
    }

    #[test]
    fn scan_respects_bounds_and_limit() {
        let backend = MemBackend::new();
        for key in ["a", "b", "c", "d"] {
            now(backend.set(key.into(), b"v".to_vec(), SetCondition::Always)).ok();
        }
        let keys = |page: Result<ScanPage, BackendError>| -> Vec<Vec<u8>> {
            page.unwrap_or_default().into_iter().map(|(key, _)| key).collect()
        };
        assert_eq!(keys(now(backend.scan(b"b".to_vec(), None, 10))), [b"b", b"c", b"d"]);
        assert_eq!(keys(now(backend.scan(b"b".to_vec(), Some(b"d".to_vec()), 10))), [b"b", b"c"]);
        assert_eq!(keys(now(backend.scan(Vec::new(), None, 2))), [b"a", b"b"]);
        assert!(keys(now(backend.scan(b"c".to_vec(), Some(b"a".to_vec()), 10))).is_empty());
    }
}
