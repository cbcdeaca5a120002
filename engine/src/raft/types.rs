//! Vocabulary of the Raft core: identifiers, log entries, hard state, snapshots and messages.
//!
//! Everything here is plain data. Newtypes keep node ids, terms and log indexes from being mixed
//! up; every message field that a peer controls is validated by `RawNode::step` before use
//! (see `Message::validate`), so a malformed message is rejected with a reason, never a panic.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::membership::Membership;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

newtype_u64!(
    /// Identifies a node (a replica's host) within a Raft group. `NodeId(0)` is never valid.
    NodeId,
    "n"
);
newtype_u64!(
    /// A Raft term: a logical clock that increases with every election.
    Term,
    "t"
);
newtype_u64!(
    /// A position in the replicated log; the first entry has index 1, index 0 is the empty prefix.
    LogIndex,
    "i"
);

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);

    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The previous index, saturating at zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.saturating_add(n))
    }
}

impl Term {
    pub const ZERO: Term = Term(0);

    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader so that it can commit entries of earlier terms (§5.4.2).
    Empty,
    /// An application command, opaque to Raft.
    Normal(#[serde(with = "crate::bytes_serde")] Vec<u8>),
    /// A membership change. It carries the *whole* resulting membership rather than a delta, so
    /// a node that never saw earlier configurations (a new replica catching up from the log)
    /// still knows the exact configuration. It takes effect as soon as it is appended.
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: EntryPayload,
}

impl Entry {
    /// Approximate encoded size, used for batching limits.
    pub fn size_bytes(&self) -> usize {
        24 + match &self.payload {
            EntryPayload::Empty => 0,
            EntryPayload::Normal(data) => data.len(),
            EntryPayload::Membership(m) => 8 * m.len(),
        }
    }
}

/// The state that must be durable before any message that depends on it leaves the node
/// (Figure 2, "persistent state on all servers"). The commit index is persisted too, as a hint
/// that lets a restarted node apply sooner; it is never trusted beyond the durable log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

/// What a snapshot covers: every entry up to and including `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
    /// The membership in effect at `index`.
    pub membership: Membership,
}

/// A snapshot of the application state machine. `data` is opaque to Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    #[serde(with = "crate::bytes_serde")]
    pub data: Vec<u8>,
}

/// A message between two replicas of one group. The host adds the group id when it batches
/// messages per peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term, except for `PreVote` where it is the term the sender would campaign in.
    pub term: Term,
    pub body: MessageBody,
}

/// The message kinds. Responses name the request they answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Pre-vote (thesis §9.6): "would you vote for me in `term`?" Changes no state at the voter.
    PreVote {
        last_index: LogIndex,
        last_term: Term,
    },
    PreVoteResponse {
        reject: bool,
    },
    /// RequestVote (Figure 2). `transfer` marks an election started by `TimeoutNow`, which
    /// voters honour even while they believe a leader is alive.
    Vote {
        last_index: LogIndex,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    /// AppendEntries (Figure 2).
    Append {
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    /// On success `index` is the last index known to match the leader's log. On rejection
    /// `index` is the rejected `prev_index`, and the hints let the leader skip a whole
    /// conflicting term at once: `hint_term` is the follower's term at `index` (`None` if its
    /// log is shorter), and `hint_index` the first index the leader should try.
    AppendResponse {
        reject: bool,
        index: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    },
    /// Liveness, commit propagation, and read confirmation: `read_seq` numbers the leader's
    /// heartbeat rounds; a follower echoes it so ReadIndex and leases can count acks.
    Heartbeat {
        commit: LogIndex,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// InstallSnapshot: the leader no longer has the entries the follower needs.
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// Leader transfer: start an election now, skipping pre-vote.
    TimeoutNow,
    /// A follower forwards a read request to its leader.
    ReadIndex {
        ctx: u64,
        lease: bool,
    },
    /// The leader's answer: the read may be served once the follower has applied `index`.
    ReadIndexResponse {
        ctx: u64,
        index: LogIndex,
    },
}

impl MessageBody {
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}

/// Why a message was refused before it touched any state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    #[error("message addressed to {to}, this node is {me}")]
    WrongRecipient { to: NodeId, me: NodeId },
    #[error("message from itself or from the invalid node id 0 ({from})")]
    BadSender { from: NodeId },
    #[error("{kind} carries term 0")]
    ZeroTerm { kind: &'static str },
    #[error("append entry {position} has index {got}, expected {expected}")]
    NonContiguousEntries { position: usize, got: LogIndex, expected: LogIndex },
    #[error("append entry at {index} has term {entry_term} above the message term {term}")]
    EntryTermAboveMessage { index: LogIndex, entry_term: Term, term: Term },
    #[error("append entry terms decrease at {index}")]
    DecreasingEntryTerms { index: LogIndex },
    #[error("prev_term {prev_term} is above the term {term} of entries that follow it")]
    PrevTermAboveEntries { prev_term: Term, term: Term },
    #[error("log position out of range: {what} = {value}")]
    IndexOutOfRange { what: &'static str, value: u64 },
    #[error("snapshot membership is invalid: {reason}")]
    BadSnapshot { reason: String },
    #[error("membership entry at {index} is invalid: {reason}")]
    BadMembershipEntry { index: LogIndex, reason: String },
}

/// Indexes beyond this are refused as corrupt: at one entry per nanosecond it lasts 290 years.
pub const LOG_INDEX_MAX: u64 = 1 << 63;

impl Message {
    /// Checks everything a peer controls that the core would otherwise have to trust: addressing,
    /// entry contiguity and terms, index ranges, and embedded memberships.
    pub fn validate(&self, me: NodeId) -> Result<(), InvalidMessage> {
        if self.to != me {
            return Err(InvalidMessage::WrongRecipient { to: self.to, me });
        }
        if self.from == me || self.from == NodeId(0) {
            return Err(InvalidMessage::BadSender { from: self.from });
        }
        if self.term == Term::ZERO {
            return Err(InvalidMessage::ZeroTerm { kind: self.body.kind() });
        }
        let check_index = |what: &'static str, index: LogIndex| {
            if index.0 > LOG_INDEX_MAX {
                Err(InvalidMessage::IndexOutOfRange { what, value: index.0 })
            } else {
                Ok(())
            }
        };
        match &self.body {
            MessageBody::PreVote { last_index, last_term }
            | MessageBody::Vote { last_index, last_term, .. } => {
                check_index("last_index", *last_index)?;
                if *last_term > self.term {
                    return Err(InvalidMessage::IndexOutOfRange { what: "last_term", value: last_term.0 });
                }
            }
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                check_index("prev_index", *prev_index)?;
                check_index("commit", *commit)?;
                if *prev_term > self.term {
                    return Err(InvalidMessage::IndexOutOfRange { what: "prev_term", value: prev_term.0 });
                }
                if prev_index.0 + (entries.len() as u64) > LOG_INDEX_MAX {
                    return Err(InvalidMessage::IndexOutOfRange { what: "entries end", value: prev_index.0 });
                }
                let mut last_term = *prev_term;
                for (position, entry) in entries.iter().enumerate() {
                    let expected = prev_index.plus(position as u64 + 1);
                    if entry.index != expected {
                        return Err(InvalidMessage::NonContiguousEntries {
                            position,
                            got: entry.index,
                            expected,
                        });
                    }
                    if entry.term > self.term {
                        return Err(InvalidMessage::EntryTermAboveMessage {
                            index: entry.index,
                            entry_term: entry.term,
                            term: self.term,
                        });
                    }
                    if entry.term < last_term {
                        return Err(if position == 0 {
                            InvalidMessage::PrevTermAboveEntries { prev_term: *prev_term, term: entry.term }
                        } else {
                            InvalidMessage::DecreasingEntryTerms { index: entry.index }
                        });
                    }
                    last_term = entry.term;
                    if let EntryPayload::Membership(m) = &entry.payload {
                        m.validate().map_err(|reason| InvalidMessage::BadMembershipEntry {
                            index: entry.index,
                            reason,
                        })?;
                    }
                }
            }
            MessageBody::AppendResponse { index, hint_index, .. } => {
                check_index("index", *index)?;
                check_index("hint_index", *hint_index)?;
            }
            MessageBody::Heartbeat { commit, .. } => check_index("commit", *commit)?,
            MessageBody::InstallSnapshot { snapshot } => {
                check_index("snapshot index", snapshot.meta.index)?;
                if snapshot.meta.term > self.term {
                    return Err(InvalidMessage::BadSnapshot {
                        reason: "snapshot term above message term".into(),
                    });
                }
                if snapshot.meta.index == LogIndex::ZERO {
                    return Err(InvalidMessage::BadSnapshot { reason: "snapshot at index 0".into() });
                }
                snapshot
                    .meta
                    .membership
                    .validate()
                    .map_err(|reason| InvalidMessage::BadSnapshot { reason })?;
            }
            MessageBody::ReadIndexResponse { index, .. } => check_index("index", *index)?,
            MessageBody::PreVoteResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow
            | MessageBody::ReadIndex { .. } => {}
        }
        Ok(())
    }
}

/// A confirmed read: the read identified by `ctx` is linearizable once the state machine has
/// applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    pub ctx: u64,
    pub index: LogIndex,
}

/// How a read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// ReadIndex (thesis §6.4): one heartbeat round to a quorum proves leadership.
    ReadIndex,
    /// A leader lease (thesis §6.4.1): no round trip while a quorum acknowledged a heartbeat
    /// recently enough, minus the configured clock-drift margin. Falls back to ReadIndex when
    /// the lease is not valid.
    Lease,
}
