//! The in-memory view of one replica's log: the entries after the last snapshot, plus the
//! commit, apply and persistence cursors.
//!
//! The core keeps the uncompacted tail of the log in memory; the host bounds it by compacting
//! after it applies (`RawNode::compact`). Keeping the tail here keeps the core free of I/O: the
//! host persists what `Ready` hands it and never has to answer reads from the core.
//!
//! Invariants (checked by `check_invariants`):
//! - `entries[k].index == offset + 1 + k` (contiguous, starting right after the snapshot);
//! - entry terms never decrease, and the first is ≥ `snapshot_term`;
//! - `applied ≤ committed ≤ last_index`, and `offset ≤ committed`;
//! - `persisted ≤ last_index`, and `unstable_from ≤ last_index + 1`.

use super::types::{Entry, LogIndex, Term};

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Index of the last entry covered by the snapshot (0 if none).
    pub offset: LogIndex,
    /// Term of the entry at `offset`.
    pub offset_term: Term,
    pub entries: Vec<Entry>,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index handed to the host for applying.
    pub applied: LogIndex,
    /// Highest index the host has reported durable.
    pub persisted: LogIndex,
    /// First index not yet handed to the host for persisting.
    pub unstable_from: LogIndex,
}

/// Entries below the snapshot are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted;

impl RaftLog {
    pub fn new(offset: LogIndex, offset_term: Term, entries: Vec<Entry>) -> RaftLog {
        let last = offset.plus(entries.len() as u64);
        RaftLog {
            offset,
            offset_term,
            entries,
            committed: offset,
            applied: offset,
            persisted: last,
            unstable_from: last.next(),
        }
    }

    pub fn last_index(&self) -> LogIndex {
        self.offset.plus(self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `index`: `None` if it is compacted away (below the snapshot) or
    /// not in the log yet.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        if index < self.offset {
            return None;
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        let position = usize::try_from(index.0 - self.offset.0 - 1).ok()?;
        self.entries.get(position)
    }

    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as ours
    /// (§5.4.1: compare last terms, then lengths).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[lo, hi]`, at most `max_count` of them and at most `max_bytes` (but at least
    /// one if any is available).
    pub fn slice(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, Compacted> {
        if lo <= self.offset {
            return Err(Compacted);
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = lo;
        while index <= hi && out.len() < max_count {
            let Some(entry) = self.entry(index) else {
                break;
            };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index = index.next();
        }
        Ok(out)
    }

    /// The first index in `entries` whose term differs from ours, or that we do not have; `None`
    /// if we already hold all of them.
    fn find_conflict(&self, entries: &[Entry]) -> Option<LogIndex> {
        entries.iter().find(|e| !self.matches(e.index, e.term)).map(|e| e.index)
    }

    /// Appends entries that directly follow a matched prefix, truncating any conflicting suffix
    /// first (Figure 2, AppendEntries rule 3). Returns the index where the log changed, if it did.
    ///
    /// Panics if the truncation would remove a committed entry: a leader never sends a
    /// conflicting committed entry (Leader Completeness), so this can only be a bug here.
    pub fn append_after_match(&mut self, entries: &[Entry]) -> Option<LogIndex> {
        let conflict = self.find_conflict(entries)?;
        assert!(
            conflict > self.committed,
            "log: conflict at {conflict} would truncate committed entries (committed {})",
            self.committed
        );
        let first = entries.first().map_or(conflict, |e| e.index);
        let skip = usize::try_from(conflict.0 - first.0).unwrap_or(usize::MAX);
        self.truncate_and_append(&entries[skip.min(entries.len())..]);
        Some(conflict)
    }

    /// Replaces everything from `entries[0].index` on with `entries`.
    pub fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(first.index > self.offset, "log: append at {} below snapshot {}", first.index, self.offset);
        assert!(
            first.index <= self.last_index().next(),
            "log: append at {} leaves a gap after {}",
            first.index,
            self.last_index()
        );
        let keep = usize::try_from(first.index.0 - self.offset.0 - 1).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        let changed_at = first.index;
        if changed_at <= self.persisted {
            self.persisted = changed_at.prev();
        }
        if changed_at < self.unstable_from {
            self.unstable_from = changed_at;
        }
    }

    /// Advances the commit index; never moves it backwards.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(index <= self.last_index(), "log: commit {index} beyond last index {}", self.last_index());
        self.committed = index;
        true
    }

    /// Resets the log to a snapshot: everything up to `index` is now covered by it.
    pub fn restore(&mut self, index: LogIndex, term: Term) {
        self.offset = index;
        self.offset_term = term;
        self.entries.clear();
        self.committed = index;
        self.applied = index;
        self.persisted = index;
        self.unstable_from = index.next();
    }

    /// Drops entries up to and including `index` (which must be applied).
    pub fn compact(&mut self, index: LogIndex) -> Result<(), Compacted> {
        if index <= self.offset {
            return Err(Compacted);
        }
        assert!(index <= self.applied, "log: compact {index} beyond applied {}", self.applied);
        let term = self.term(index).ok_or(Compacted)?;
        let drop = usize::try_from(index.0 - self.offset.0).unwrap_or(usize::MAX);
        self.entries.drain(..drop.min(self.entries.len()));
        self.offset = index;
        self.offset_term = term;
        Ok(())
    }

    /// Entries to hand to the host for persisting.
    pub fn unstable(&self) -> &[Entry] {
        let from =
            usize::try_from(self.unstable_from.0.saturating_sub(self.offset.0 + 1)).unwrap_or(usize::MAX);
        self.entries.get(from..).unwrap_or(&[])
    }

    /// Committed entries not yet handed out for applying.
    pub fn next_committed(&self) -> &[Entry] {
        if self.committed <= self.applied {
            return &[];
        }
        let from = usize::try_from(self.applied.0 - self.offset.0).unwrap_or(usize::MAX);
        let to = usize::try_from(self.committed.0 - self.offset.0).unwrap_or(usize::MAX);
        self.entries.get(from..to).unwrap_or(&[])
    }

    /// O(n) structural checks, run after every step in debug and simulation builds.
    pub fn check_invariants(&self) {
        let mut expected = self.offset.next();
        let mut term = self.offset_term;
        for entry in &self.entries {
            assert_eq!(entry.index, expected, "log: entries not contiguous");
            assert!(entry.term >= term, "log: term decreases at {}", entry.index);
            expected = expected.next();
            term = entry.term;
        }
        assert!(
            self.applied <= self.committed,
            "log: applied {} > committed {}",
            self.applied,
            self.committed
        );
        assert!(
            self.committed <= self.last_index(),
            "log: committed {} > last {}",
            self.committed,
            self.last_index()
        );
        assert!(
            self.offset <= self.committed,
            "log: snapshot {} > committed {}",
            self.offset,
            self.committed
        );
        assert!(self.persisted <= self.last_index(), "log: persisted beyond last");
        assert!(self.unstable_from <= self.last_index().next(), "log: unstable_from beyond end");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Empty }
    }

    #[test]
    fn append_truncates_conflicting_suffix() {
        let mut log = RaftLog::new(LogIndex(0), Term(0), vec![e(1, 1), e(2, 1), e(3, 2)]);
        let changed = log.append_after_match(&[e(2, 1), e(3, 3), e(4, 3)]);
        assert_eq!(changed, Some(LogIndex(3)));
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
        assert_eq!(log.persisted, LogIndex(2));
        log.check_invariants();
    }

    #[test]
    fn append_of_held_entries_changes_nothing() {
        let mut log = RaftLog::new(LogIndex(0), Term(0), vec![e(1, 1), e(2, 1), e(3, 2)]);
        assert_eq!(log.append_after_match(&[e(1, 1), e(2, 1)]), None);
        assert_eq!(log.last_index(), LogIndex(3), "a stale append must not truncate a longer log");
    }

    #[test]
    fn compact_keeps_tail_terms() {
        let mut log = RaftLog::new(LogIndex(0), Term(0), vec![e(1, 1), e(2, 1), e(3, 2)]);
        log.commit_to(LogIndex(3));
        log.applied = LogIndex(3);
        log.compact(LogIndex(2)).unwrap();
        assert_eq!(log.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert_eq!(log.slice(LogIndex(2), LogIndex(3), 10, 1 << 20), Err(Compacted));
        assert_eq!(log.slice(LogIndex(3), LogIndex(3), 10, 1 << 20).unwrap().len(), 1);
        log.check_invariants();
    }
}
