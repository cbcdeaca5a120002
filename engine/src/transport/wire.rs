//! What peers say to each other: one `RaftBatch` per peer per driver round.
//!
//! Heartbeats are coalesced: the host strips the per-group `Heartbeat`/`HeartbeatResponse`
//! messages out of the Raft core's output and sends one compact `(range, term, commit,
//! read_seq)` tuple per group instead, all in the batch for that peer — so a node leading
//! thousands of groups sends one heartbeat message per peer per tick, not one per group.

use serde::{Deserialize, Serialize};

use crate::ids::RangeId;
use crate::raft::{LogIndex, Message, NodeId, SnapshotMeta, Term};

/// Everything one node sends another in one driver round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftBatch {
    pub from: NodeId,
    pub to: NodeId,
    /// Non-heartbeat Raft messages, tagged with their group.
    pub messages: Vec<(RangeId, Message)>,
    pub heartbeats: Vec<HeartbeatEntry>,
    pub heartbeat_responses: Vec<HeartbeatResponseEntry>,
    /// Groups the sender leads that are quiescing: the receiver stops ticking them until a
    /// message for them arrives (or the sender's node is declared dead).
    pub quiesce: Vec<(RangeId, Term)>,
    /// Pieces of `InstallSnapshot` messages: a snapshot travels in bounded chunks over
    /// successive batches and becomes a Raft message again once the receiver has all of it.
    pub snapshot_chunks: Vec<SnapshotChunk>,
}

impl RaftBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.heartbeats.is_empty()
            && self.heartbeat_responses.is_empty()
            && self.quiesce.is_empty()
            && self.snapshot_chunks.is_empty()
    }
}

/// One group's heartbeat inside a coalesced batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatEntry {
    pub range: RangeId,
    pub term: Term,
    pub commit: LogIndex,
    pub read_seq: u64,
}

/// One group's heartbeat acknowledgement inside a coalesced batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponseEntry {
    pub range: RangeId,
    pub term: Term,
    pub read_seq: u64,
}

/// One piece of a snapshot. The receiver keeps the pieces of one snapshot (same range, term and
/// metadata) by offset, in any order, and hands the core the whole `InstallSnapshot` once they
/// tile the data exactly; a piece of a different snapshot starts over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub range: RangeId,
    /// The term of the `InstallSnapshot` message this chunk belongs to.
    pub term: Term,
    pub meta: SnapshotMeta,
    /// Where `bytes` starts in the snapshot data, and the data's whole length.
    pub offset: u64,
    pub total: u64,
    #[serde(with = "crate::bytes_serde")]
    pub bytes: Vec<u8>,
}
