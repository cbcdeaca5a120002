//! The Raft consensus algorithm as a pure, deterministic state machine.
//!
//! No I/O, no clocks, no threads, no global randomness: the host feeds ticks and messages into a
//! [`RawNode`] and receives a [`Ready`] of work to persist, send and apply (see `node.rs` for the
//! contract). This is what lets the simulator (`crate::sim`) run thousands of seeded clusters
//! with crashes and partitions, and replay any of them exactly.
//!
//! Module map:
//! - `types`: ids, terms, indexes, entries, messages, and message validation;
//! - `membership`: memberships, joint consensus, quorum arithmetic;
//! - `log`: the in-memory log tail with commit/apply/persist cursors;
//! - `progress`: the leader's per-follower replication state;
//! - `node`: `RawNode`, the algorithm itself.

mod log;
mod membership;
mod node;
mod progress;
mod types;

#[cfg(test)]
mod tests;

pub use membership::{ConfChange, ConfChangeKind, Membership, VoteResult};
pub use node::{
    Config, InitialState, PlantedBug, RaftError, RawNode, Ready, Role, SoftState, Status, BOOTSTRAP_TERM,
};
pub use types::{
    Entry, EntryPayload, HardState, InvalidMessage, LogIndex, Message, MessageBody, NodeId, ReadMode,
    ReadState, Snapshot, SnapshotMeta, Term, LOG_INDEX_MAX,
};
