//! The simulator's safety checks, fed by the world as things happen.
//!
//! Each check is a property from the Raft paper (§5.2, Figure 3) or from linearizability:
//! - **election safety**: at most one leader per term;
//! - **log matching**: two durable entries with the same index and term have the same payload
//!   and the same predecessor term, hence (by induction) identical prefixes;
//! - **leader completeness**: a leader of term T holds every entry committed in a term below T;
//! - **state-machine safety**: no two replicas apply different entries at one index, and a
//!   snapshot's state equals the state every replica reached at that index;
//! - **durable commit**: when a leader commits an index, a quorum of its membership holds that
//!   entry durably — so no crash can lose it;
//! - **linearizable reads**: a ReadIndex or lease read is served at an index no lower than the
//!   highest index committed anywhere before the read began.
//!
//! Memory grows with the number of entries, which the step budget bounds.

use std::collections::BTreeMap;

use crate::raft::{LogIndex, NodeId, Term};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Per-group history.
#[derive(Debug, Default)]
pub struct GroupChecker {
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) → (predecessor term, payload hash) of every durable entry seen.
    entries: BTreeMap<(LogIndex, Term), (Term, u64)>,
    /// index → (term, payload hash, state hash after applying) of the first application seen.
    applied: BTreeMap<LogIndex, (Term, u64, u64)>,
    /// index → term of every index known committed.
    committed: BTreeMap<LogIndex, Term>,
    /// The highest index known committed anywhere.
    pub commit_max: LogIndex,
}

impl GroupChecker {
    pub fn on_leader(&mut self, term: Term, id: NodeId) -> Result<(), Violation> {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => Err(Violation {
                invariant: "election safety",
                detail: format!("two leaders in term {term}: {other} and {id}"),
            }),
            _ => Ok(()),
        }
    }

    pub fn leaders_elected(&self) -> usize {
        self.leaders.len()
    }

    pub fn on_durable_entry(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        prev_term: Term,
        payload: u64,
    ) -> Result<(), Violation> {
        match self.entries.insert((index, term), (prev_term, payload)) {
            Some(seen) if seen != (prev_term, payload) => Err(Violation {
                invariant: "log matching",
                detail: format!(
                    "{node} holds entry {index}@{term} with predecessor term {prev_term} and payload {payload:#x}; \
                     another replica held it with predecessor term {} and payload {:#x}",
                    seen.0, seen.1
                ),
            }),
            _ => Ok(()),
        }
    }

    pub fn on_commit(&mut self, node: NodeId, index: LogIndex, term: Term) -> Result<(), Violation> {
        if let Some(&seen) = self.committed.get(&index) {
            if seen != term {
                return Err(Violation {
                    invariant: "state-machine safety",
                    detail: format!(
                        "{node} committed index {index} with term {term}, earlier committed with term {seen}"
                    ),
                });
            }
        } else {
            self.committed.insert(index, term);
        }
        self.commit_max = self.commit_max.max(index);
        Ok(())
    }

    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        self.committed.get(&index).copied()
    }

    /// Committed indexes in `(after, ..]` with their terms.
    pub fn committed_after(&self, after: LogIndex) -> impl Iterator<Item = (LogIndex, Term)> + '_ {
        self.committed.range(after.next()..).map(|(&i, &t)| (i, t))
    }

    pub fn on_apply(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        payload: u64,
        state: u64,
    ) -> Result<(), Violation> {
        match self.applied.get(&index) {
            Some(&(t, p, s)) if (t, p, s) != (term, payload, state) => Err(Violation {
                invariant: "state-machine safety",
                detail: format!(
                    "{node} applied {index}@{term} (payload {payload:#x}, state {state:#x}); \
                     another replica applied {index}@{t} (payload {p:#x}, state {s:#x})"
                ),
            }),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(index, (term, payload, state));
                Ok(())
            }
        }
    }

    pub fn on_snapshot_installed(
        &mut self,
        node: NodeId,
        index: LogIndex,
        state: u64,
    ) -> Result<(), Violation> {
        match self.applied.get(&index) {
            Some(&(_, _, s)) if s != state => Err(Violation {
                invariant: "state-machine safety",
                detail: format!("{node} installed a snapshot at {index} with state {state:#x}, replicas applied state {s:#x}"),
            }),
            _ => Ok(()),
        }
    }
}
