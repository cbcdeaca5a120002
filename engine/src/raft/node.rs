//! `RawNode`: one replica of one Raft group, as a deterministic state machine.
//!
//! The host drives it with four kinds of input — `tick`, `step(message)`, `propose*`, and
//! `read_index` — and then collects the work those inputs produced with `ready()`: hard state
//! and entries to persist, a received snapshot to install, messages to send, committed entries
//! to apply, and confirmed reads. Once the host has made the hard state, snapshot and entries
//! durable it sends the messages, applies the committed entries, and calls `advance()`.
//!
//! To ensure correctness the host must:
//! - persist `Ready::snapshot`, then `Ready::entries` (truncating its log from the first entry's
//!   index), then `Ready::hard_state`, durably, *before* sending any of `Ready::messages`: a vote
//!   or an append acknowledgement promises that the state is on disk;
//! - apply `Ready::committed_entries` in order, after installing the snapshot;
//! - call `advance()` exactly once per `ready()`, with no other call in between;
//! - serve a `ReadState` only once it has applied `ReadState::index`.
//!
//! The rules of Figure 2 of the Raft paper map onto this file as follows: "Rules for servers"
//! live in `step` (term handling), `tick` (election timeout) and `maybe_commit`; RequestVote in
//! `handle_vote_request`; AppendEntries in `handle_append`. Extensions from Ongaro's thesis:
//! pre-vote (§9.6), check-quorum and leader stickiness (§6.2, §9.6), leader transfer (§3.10),
//! ReadIndex and leases (§6.4), joint consensus (§4.3), and fast backtracking (§5.3).
//!
//! Nothing in this module does I/O, reads a clock, or uses global randomness: time is `tick`,
//! randomness is the seeded `Rng` the host passes in.

use std::collections::{BTreeMap, VecDeque};
use std::mem;

use super::log::RaftLog;
use super::membership::{ConfChange, Membership, VoteResult};
use super::progress::{Progress, ProgressState};
use super::types::{
    Entry, EntryPayload, HardState, InvalidMessage, LogIndex, Message, MessageBody, NodeId, ReadMode,
    ReadState, Snapshot, SnapshotMeta, Term, LOG_INDEX_MAX,
};
use crate::rng::Rng;

/// Deliberate protocol bugs that the simulator must catch. They exist only so that tests can
/// prove the checks have teeth; they are reachable only through `Config::planted_bug`, which no
/// production host sets (`flotilla sim --inject-bug NAME` is the only way in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A voter grants a second vote in a term it already voted in.
    VoteTwice,
    /// The leader commits an earlier-term entry by counting replicas (ignores §5.4.2).
    CommitOldTerm,
    /// A follower appends even when its entry at prev_index has a different term.
    SkipLogCheck,
    /// The host sends messages before the hard state is durable (implemented by the host).
    ForgetHardState,
    /// Lease reads trust the whole election timeout, with no clock-drift margin.
    LeaseNoDrift,
    /// Joint decisions are made by C_new alone.
    JointSingleQuorum,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 6] = [
        PlantedBug::VoteTwice,
        PlantedBug::CommitOldTerm,
        PlantedBug::SkipLogCheck,
        PlantedBug::ForgetHardState,
        PlantedBug::LeaseNoDrift,
        PlantedBug::JointSingleQuorum,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::VoteTwice => "vote-twice",
            PlantedBug::CommitOldTerm => "commit-old-term",
            PlantedBug::SkipLogCheck => "skip-log-check",
            PlantedBug::ForgetHardState => "forget-hardstate",
            PlantedBug::LeaseNoDrift => "lease-no-drift",
            PlantedBug::JointSingleQuorum => "joint-single-quorum",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Static configuration of one replica. Every limit is a named field with its unit.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Minimum election timeout; the actual timeout is drawn from
    /// `[election_ticks, 2 * election_ticks)` after every reset.
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    /// Leader steps down when it has not heard from a quorum for `election_ticks`; followers
    /// that heard from a leader within `election_ticks` ignore vote requests (stickiness).
    /// Leases require it.
    pub check_quorum: bool,
    /// Unacknowledged appends per follower in the `Replicate` state.
    pub max_inflight_msgs: usize,
    pub max_msg_entries: usize,
    pub max_msg_bytes: usize,
    /// Proposals are refused while this many entries are appended but not committed.
    pub max_uncommitted_entries: usize,
    /// How many ticks of clock drift between any two replicas over one election timeout the
    /// lease must tolerate. The lease lasts `election_ticks - lease_drift_ticks - 2` ticks from
    /// the start of the heartbeat round a quorum acknowledged (the 2 covers tick granularity at
    /// both ends); zero or less disables lease reads.
    pub lease_drift_ticks: u32,
    /// The host keeps the state machine's data and reads a snapshot's data from it when one
    /// is sent (DESIGN: "a read transaction over the range's key span"): the core keeps only
    /// snapshot metadata, `compact` takes no data, an `InstallSnapshot` leaves with empty
    /// data that the host must fill — at the snapshot's index or, via
    /// [`RawNode::snapshot_meta_at`], a later applied one — and an installed snapshot's data
    /// is not kept once it is handed to the host in a `Ready`.
    pub host_snapshot_data: bool,
    /// Testing only: see `PlantedBug`.
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 64,
            max_msg_entries: 256,
            max_msg_bytes: 1 << 20,
            max_uncommitted_entries: 10_000,
            lease_drift_ticks: 2,
            host_snapshot_data: false,
            planted_bug: None,
        }
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |reason: &str| Err(RaftError::InvalidConfig(reason.to_string()));
        if self.id == NodeId(0) {
            return bad("id must be non-zero");
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad("election_ticks must exceed heartbeat_ticks");
        }
        if self.max_inflight_msgs == 0 || self.max_msg_entries == 0 || self.max_msg_bytes == 0 {
            return bad("max_inflight_msgs, max_msg_entries and max_msg_bytes must be at least 1");
        }
        if self.max_uncommitted_entries == 0 {
            return bad("max_uncommitted_entries must be at least 1");
        }
        Ok(())
    }

    /// Ticks a lease lasts after the start of an acknowledged heartbeat round (0 = no leases).
    pub fn lease_ticks(&self) -> u64 {
        if !self.check_quorum {
            return 0;
        }
        if self.planted_bug == Some(PlantedBug::LeaseNoDrift) {
            return u64::from(self.election_ticks);
        }
        u64::from(self.election_ticks).saturating_sub(u64::from(self.lease_drift_ticks) + 2)
    }
}

/// Errors of the Raft core. Variants carry what a caller needs to retry elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("a leader transfer is in progress")]
    TransferInProgress,
    #[error("a membership change is still pending")]
    ConfChangePending,
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    #[error("invalid leader transfer: {0}")]
    InvalidTransfer(String),
    #[error("too many uncommitted entries ({uncommitted})")]
    ProposalLimit { uncommitted: u64 },
    #[error("invalid message: {0}")]
    InvalidMessage(#[from] InvalidMessage),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("inconsistent durable state: {0}")]
    InvalidState(String),
    #[error("index {index} is compacted or not yet applied")]
    Compacted { index: LogIndex },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What a replica recovers from its durable state after a restart (or starts with).
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    pub hard_state: HardState,
    /// The latest durable snapshot; its membership is the base configuration.
    pub snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The state machine's durable applied index (at least the snapshot's index).
    pub applied: LogIndex,
}

impl InitialState {
    /// The state of a member of a brand-new group: the initial membership as the first log
    /// entry, at index 1 in term 1, already committed. Every initial member starts with the
    /// identical entry, so it is committed by construction; replicas added later receive it
    /// like any other entry, so every log (and snapshot) carries its membership.
    pub fn bootstrap(membership: Membership) -> InitialState {
        InitialState {
            hard_state: HardState { term: BOOTSTRAP_TERM, vote: None, commit: LogIndex(1) },
            snapshot: None,
            entries: vec![Entry {
                term: BOOTSTRAP_TERM,
                index: LogIndex(1),
                payload: EntryPayload::Membership(membership),
            }],
            applied: LogIndex::ZERO,
        }
    }
}

/// The term of the bootstrap entry. No election happens in it, so a node at this term that
/// has not voted has never acknowledged a leader.
pub const BOOTSTRAP_TERM: Term = Term(1);

/// Observable, non-durable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
}

/// Work for the host; see the module docs for the order in which to do it.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub soft_state: Option<SoftState>,
}

/// What `ready()` handed out, so that `advance()` knows what became durable.
#[derive(Debug)]
struct ReadyCursor {
    hard_state: HardState,
    last_entry: Option<(LogIndex, Term)>,
    snapshot_index: Option<LogIndex>,
}

/// A summary for observers (hosts, the simulator, `/status`).
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub last_index: LogIndex,
    pub membership: Membership,
}

#[derive(Debug)]
struct PendingRead {
    seq: u64,
    ctx: u64,
    requester: NodeId,
    index: LogIndex,
}

/// One replica of one Raft group.
#[derive(Debug)]
pub struct RawNode {
    cfg: Config,
    rng: Rng,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// The membership in effect: from the last membership entry in the log, else the snapshot.
    membership: Membership,
    /// Index of the entry (or snapshot) that set `membership`.
    membership_index: LogIndex,
    /// The membership at `log.offset`, the fallback when no membership entry is in the log.
    snapshot_membership: Membership,
    /// The latest snapshot this replica has: taken locally or installed. Sent to followers
    /// that need compacted entries.
    snapshot: Option<Snapshot>,
    /// A snapshot received from the leader, for the next `Ready`.
    pending_snapshot: Option<Snapshot>,
    /// Leader only: one entry per member, including this node.
    progress: BTreeMap<NodeId, Progress>,
    /// (Pre-)candidate only: answers received.
    votes: BTreeMap<NodeId, bool>,
    /// The tick at which this node last heard from a leader of its term.
    leader_contact_tick: Option<u64>,
    /// Started from durable state with a non-zero term (a restart, not a new group).
    restarted: bool,
    /// Monotonic count of ticks since start; the lease's clock.
    ticks: u64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    transfer_target: Option<NodeId>,
    /// Leader: a `TimeoutNow` was sent this term. The target's election bypasses stickiness,
    /// so from then on this leader's lease proves nothing and lease reads are off.
    timeout_now_sent: bool,
    /// Leader: entries were appended and not yet broadcast; sent once per ready (batching).
    broadcast_pending: bool,
    /// Leader: heartbeat rounds. `read_seq` numbers the latest round; `rounds` keeps
    /// (seq, tick sent) of rounds a quorum has not yet acknowledged.
    read_seq: u64,
    round_unsent: bool,
    rounds: VecDeque<(u64, u64)>,
    /// Leader: start tick of the latest heartbeat round a quorum acknowledged.
    lease_start_tick: Option<u64>,
    pending_reads: VecDeque<PendingRead>,
    /// Leader: reads that arrived before the leader committed an entry of its term.
    reads_waiting_commit: Vec<(u64, NodeId, ReadMode)>,
    messages: Vec<Message>,
    read_states: Vec<ReadState>,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    in_ready: Option<ReadyCursor>,
}

impl RawNode {
    /// Creates a replica from its durable state. The state is checked; a corrupt one is an error.
    pub fn new(cfg: Config, initial: InitialState, seed: u64) -> Result<RawNode, RaftError> {
        cfg.validate()?;
        let (offset, offset_term, base_membership) = match &initial.snapshot {
            Some(s) => (s.meta.index, s.meta.term, s.meta.membership.clone()),
            None => (LogIndex::ZERO, Term::ZERO, Membership::default()),
        };
        let mut expected = offset.next();
        let mut last_term = offset_term;
        for entry in &initial.entries {
            if entry.index != expected {
                return Err(RaftError::InvalidState(format!(
                    "entry {} where {expected} was expected",
                    entry.index
                )));
            }
            if entry.term < last_term {
                return Err(RaftError::InvalidState(format!("term decreases at {}", entry.index)));
            }
            if entry.term > initial.hard_state.term {
                return Err(RaftError::InvalidState(format!(
                    "entry {} has term {} above the durable term {}",
                    entry.index, entry.term, initial.hard_state.term
                )));
            }
            expected = expected.next();
            last_term = entry.term;
        }
        let mut log = RaftLog::new(offset, offset_term, initial.entries);
        // The durable commit is a hint: never beyond the durable log.
        let commit = initial.hard_state.commit.min(log.last_index()).max(offset);
        log.committed = commit;
        log.applied = initial.applied.clamp(offset, commit);
        let mut rng = Rng::new(seed);
        let randomized_election_ticks = cfg.election_ticks + rng.below(u64::from(cfg.election_ticks)) as u32;
        let hard_state = HardState { term: initial.hard_state.term, vote: initial.hard_state.vote, commit };
        let mut node = RawNode {
            rng,
            term: initial.hard_state.term,
            vote: initial.hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            membership: base_membership.clone(),
            membership_index: offset,
            snapshot_membership: base_membership,
            snapshot: initial.snapshot,
            pending_snapshot: None,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            leader_contact_tick: None,
            restarted: initial.hard_state.term > BOOTSTRAP_TERM || initial.hard_state.vote.is_some(),
            ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks,
            transfer_target: None,
            timeout_now_sent: false,
            broadcast_pending: false,
            read_seq: 0,
            round_unsent: false,
            rounds: VecDeque::new(),
            lease_start_tick: None,
            pending_reads: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            messages: Vec::new(),
            read_states: Vec::new(),
            prev_hard_state: hard_state,
            prev_soft_state: SoftState { role: Role::Follower, leader: None },
            in_ready: None,
            cfg,
        };
        node.refresh_membership();
        Ok(node)
    }

    // ---------------------------------------------------------------- observers

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The entry at `index`, if it is in the in-memory log.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.log.offset
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            term: self.term,
            vote: self.vote,
            role: self.role,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            membership: self.membership.clone(),
        }
    }

    /// The leader's replication state per member, for diagnostics (empty on followers).
    pub fn progress_summary(&self) -> String {
        self.progress
            .iter()
            .map(|(id, p)| {
                format!(
                    "{id}:{:?} match {} next {} inflight {}",
                    p.state,
                    p.match_index,
                    p.next_index,
                    p.inflight.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether a leader's group is idle and fully replicated, so the host may stop ticking it
    /// (quiescence): everything committed and matched by every member, no transfer, no pending
    /// reads, no entries waiting to be broadcast. (Pending heartbeats do not count: they carry
    /// nothing a quiesced follower needs.)
    pub fn is_quiescent(&self) -> bool {
        self.role == Role::Leader
            && self.committed_in_term()
            && self.log.committed == self.log.last_index()
            && self.transfer_target.is_none()
            && self.pending_reads.is_empty()
            && self.reads_waiting_commit.is_empty()
            && !self.broadcast_pending
            && self.progress.values().all(|p| p.match_index == self.log.last_index())
    }

    /// Forgets the lease. The host calls this when a quiesced group resumes ticking: ticks did
    /// not advance while it slept, so the lease's clock cannot be trusted.
    pub fn reset_lease(&mut self) {
        self.lease_start_tick = None;
        self.rounds.clear();
    }

    /// Whether a lease read would be served right now without a round trip.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || self.transfer_target.is_some()
            || self.timeout_now_sent
            || !self.committed_in_term()
        {
            return false;
        }
        let lease_ticks = self.cfg.lease_ticks();
        match self.lease_start_tick {
            Some(start) if lease_ticks > 0 => self.ticks < start + lease_ticks,
            _ => false,
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.debug_assert_not_in_ready();
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed = self.election_elapsed.saturating_add(1);
                if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
                    self.campaign(false);
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.cfg.id;
                let active = {
                    let progress = &self.progress;
                    self.quorum_membership()
                        .has_quorum(|id| id == me || progress.get(&id).is_some_and(|p| p.recent_active))
                };
                for (id, p) in self.progress.iter_mut() {
                    p.recent_active = *id == me;
                }
                if !active {
                    // Check-quorum: a leader cut off from a quorum stops serving, so that a
                    // partitioned leader cannot hand out stale lease reads for long.
                    self.become_follower(self.term, None);
                    return;
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.transfer_target = None;
        }
        // Snapshots whose acknowledgement never came (lost message, crashed follower) are
        // retried by falling back to probing.
        let timeout = 2 * u64::from(self.cfg.election_ticks);
        let ticks = self.ticks;
        for p in self.progress.values_mut() {
            if p.state == ProgressState::Snapshot && ticks >= p.snapshot_sent_tick + timeout {
                p.become_probe();
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.start_heartbeat_round();
        }
    }

    /// Starts an election now (if this node may campaign), as if the election timeout elapsed.
    pub fn campaign_now(&mut self) {
        self.debug_assert_not_in_ready();
        if self.role != Role::Leader {
            self.campaign(false);
        }
    }

    /// Proposes an application command. Returns the index it was appended at; it is committed
    /// once that index appears in `committed_entries` with this node's current term.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<LogIndex, RaftError> {
        self.debug_assert_not_in_ready();
        self.check_can_propose()?;
        Ok(self.append_entry(EntryPayload::Normal(data)))
    }

    /// Proposes a membership change. Changes of voters go through a joint membership that the
    /// leader leaves by itself once it commits. A change is refused while another is pending
    /// (an uncommitted membership entry, or a joint membership not yet left).
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<LogIndex, RaftError> {
        self.debug_assert_not_in_ready();
        self.check_can_propose()?;
        if self.membership_index > self.log.committed || self.membership.is_joint() {
            return Err(RaftError::ConfChangePending);
        }
        let next = self.membership.apply(&change).map_err(RaftError::InvalidConfChange)?;
        Ok(self.append_entry(EntryPayload::Membership(next)))
    }

    /// Requests a linearizable read identified by `ctx`; it completes as a `ReadState` in a
    /// later `Ready`, possibly never (lost leadership): the host must time reads out.
    pub fn read_index(&mut self, ctx: u64, mode: ReadMode) -> Result<(), RaftError> {
        self.debug_assert_not_in_ready();
        match self.role {
            Role::Leader => {
                self.leader_read(ctx, self.cfg.id, mode);
                Ok(())
            }
            _ => match self.leader {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex { ctx, lease: mode == ReadMode::Lease });
                    Ok(())
                }
                None => Err(RaftError::NotLeader { leader_hint: None }),
            },
        }
    }

    /// Hands leadership to `to` (§3.10): stop accepting proposals, bring `to` up to date, then
    /// tell it to campaign at once. Abandoned after an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        self.debug_assert_not_in_ready();
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { leader_hint: self.leader });
        }
        if to == self.cfg.id {
            return Ok(());
        }
        if !self.membership.is_voter(to) {
            return Err(RaftError::InvalidTransfer(format!("{to} is not a voter")));
        }
        self.transfer_target = Some(to);
        self.election_elapsed = 0;
        let caught_up = self.progress.get(&to).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, false);
        }
        Ok(())
    }

    /// The host could not reach `to`: stop pipelining to it and probe again.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(p) = self.progress.get_mut(&to) {
            if p.state == ProgressState::Replicate {
                p.become_probe();
            }
        }
    }

    /// The host is still delivering the snapshot it was asked to send to `to` (in chunks): the
    /// snapshot's timeout counts from now, so that a large transfer is not restarted midway.
    pub fn report_snapshot_progress(&mut self, to: NodeId) {
        let ticks = self.ticks;
        if let Some(p) = self.progress.get_mut(&to) {
            if p.state == ProgressState::Snapshot {
                p.snapshot_sent_tick = ticks;
            }
        }
    }

    /// Takes a snapshot at `index` (which must be applied) with the state machine's `data`, and
    /// drops the log up to it. Returns the snapshot's metadata, which the host persists.
    pub fn compact(&mut self, index: LogIndex, data: Vec<u8>) -> Result<SnapshotMeta, RaftError> {
        self.debug_assert_not_in_ready();
        debug_assert!(!self.cfg.host_snapshot_data || data.is_empty(), "the host keeps snapshot data");
        if index > self.log.applied || index <= self.log.offset {
            return Err(RaftError::Compacted { index });
        }
        let membership = self.membership_at(index);
        let term = self.log.term(index).ok_or(RaftError::Compacted { index })?;
        self.log.compact(index).map_err(|_| RaftError::Compacted { index })?;
        let meta = SnapshotMeta { index, term, membership: membership.clone() };
        self.snapshot = Some(Snapshot { meta: meta.clone(), data });
        self.snapshot_membership = membership;
        Ok(meta)
    }

    /// Processes one message from a peer. A malformed message is rejected, changing nothing.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        self.debug_assert_not_in_ready();
        m.validate(self.cfg.id)?;
        if m.term.0 > LOG_INDEX_MAX {
            return Err(InvalidMessage::IndexOutOfRange { what: "term", value: m.term.0 }.into());
        }
        if m.term > self.term {
            let is_vote_request = matches!(m.body, MessageBody::PreVote { .. } | MessageBody::Vote { .. });
            let forced = matches!(m.body, MessageBody::Vote { transfer: true, .. });
            if is_vote_request && !forced && self.in_leader_lease() {
                // Leader stickiness: we heard from a live leader less than an election timeout
                // ago, so this candidate is disruptive (e.g. rejoining after a partition).
                // Ignoring it — without adopting its term — is what makes leases safe.
                return Ok(());
            }
            match m.body {
                // A pre-vote request changes nothing here, and a granted pre-vote carries the
                // future term the candidate asked about.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader (e.g. healed from a partition) would otherwise never learn
                    // of the new term: with pre-vote it cannot raise our term itself. Answer
                    // with our term so it steps down.
                    self.send(
                        m.from,
                        MessageBody::AppendResponse {
                            reject: true,
                            index: LogIndex::ZERO,
                            hint_index: LogIndex::ZERO,
                            hint_term: None,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { reject: true });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote { last_index, last_term } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, true)
            }
            MessageBody::Vote { last_index, last_term, .. } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, false)
            }
            body => match self.role {
                Role::Leader => self.step_leader(m.from, body),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m.from, m.term, body),
                Role::Follower => self.step_follower(m.from, body),
            },
        }
        self.debug_check_invariants();
        Ok(())
    }

    // ---------------------------------------------------------------- ready / advance

    pub fn has_ready(&self) -> bool {
        self.broadcast_pending
            || self.hard_state() != self.prev_hard_state
            || self.soft_state() != self.prev_soft_state
            || self.pending_snapshot.is_some()
            || !self.log.unstable().is_empty()
            || !self.messages.is_empty()
            || !self.log.next_committed().is_empty()
            || !self.read_states.is_empty()
    }

    /// Collects the work produced since the last `advance`.
    pub fn ready(&mut self) -> Ready {
        self.debug_assert_not_in_ready();
        if mem::take(&mut self.broadcast_pending) && self.role == Role::Leader {
            self.broadcast_append(false);
        }
        self.round_unsent = false;
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        let snapshot = self.pending_snapshot.take();
        let entries = self.log.unstable().to_vec();
        let committed_entries = self.log.next_committed().to_vec();
        if let Some(last) = committed_entries.last() {
            self.log.applied = last.index;
        }
        self.log.unstable_from = self.log.last_index().next();
        self.in_ready = Some(ReadyCursor {
            hard_state,
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
        });
        let ready = Ready {
            hard_state: (hard_state != self.prev_hard_state).then_some(hard_state),
            snapshot,
            entries,
            messages: mem::take(&mut self.messages),
            committed_entries,
            read_states: mem::take(&mut self.read_states),
            soft_state: (soft_state != self.prev_soft_state).then_some(soft_state),
        };
        self.prev_soft_state = soft_state;
        ready
    }

    /// Tells the node the last `Ready` is durable, sent and applied.
    pub fn advance(&mut self) {
        let Some(cursor) = self.in_ready.take() else {
            debug_assert!(false, "advance without ready");
            return;
        };
        self.prev_hard_state = cursor.hard_state;
        if let Some(index) = cursor.snapshot_index {
            self.log.persisted = self.log.persisted.max(index);
        }
        if let Some((index, term)) = cursor.last_entry {
            // The entries may have been replaced since; only what is still in the log counts.
            if self.log.matches(index, term) && index > self.log.persisted {
                self.log.persisted = index;
            }
        }
        if self.role == Role::Leader {
            let me = self.cfg.id;
            let persisted = self.log.persisted;
            if let Some(p) = self.progress.get_mut(&me) {
                p.maybe_update(persisted);
            }
            self.maybe_commit();
        }
        self.debug_check_invariants();
    }

    // ---------------------------------------------------------------- elections

    /// Whether this node may campaign: only voters of its own membership.
    fn promotable(&self) -> bool {
        self.membership.is_voter(self.cfg.id)
    }

    /// Leader stickiness: refuse to help depose a leader we heard from within an election
    /// timeout. A freshly (re)started node also waits one election timeout before voting: it
    /// may have acknowledged a heartbeat just before it crashed, and a leader's lease counts on
    /// that acknowledgement.
    ///
    /// It is measured from the last contact with a leader, not from `self.leader`: a node that
    /// was told to campaign (and cleared its leader) must still not help depose a leader whose
    /// lease may count on this node's recent acknowledgement.
    fn in_leader_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.role == Role::Leader {
            return true;
        }
        let window = u64::from(self.cfg.election_ticks);
        let heard_recently = self.leader_contact_tick.is_some_and(|t| self.ticks < t + window);
        heard_recently || (self.restarted && self.ticks < window)
    }

    /// Starts an election: with pre-vote enabled a pre-vote round first, unless this is a
    /// transfer (`TimeoutNow`), which goes straight to a real election.
    fn campaign(&mut self, transfer: bool) {
        let pre = self.cfg.pre_vote && !transfer;
        self.start_election(pre, transfer);
    }

    fn start_election(&mut self, pre: bool, transfer: bool) {
        if !self.promotable() {
            return;
        }
        if pre {
            self.reset_role_state();
            self.role = Role::PreCandidate;
            self.leader = None;
        } else {
            let term = self.term.next();
            self.reset_role_state();
            self.term = term;
            self.vote = Some(self.cfg.id);
            self.role = Role::Candidate;
            self.leader = None;
        }
        let campaign_term = if pre { self.term.next() } else { self.term };
        self.votes.insert(self.cfg.id, true);
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for id in self.membership.all_voters() {
            if id == self.cfg.id {
                continue;
            }
            let body = if pre {
                MessageBody::PreVote { last_index, last_term }
            } else {
                MessageBody::Vote { last_index, last_term, transfer }
            };
            self.messages.push(Message { from: self.cfg.id, to: id, term: campaign_term, body });
        }
        self.tally_votes();
    }

    /// RequestVote receiver rules (Figure 2) and their pre-vote twin. Every node answers, even
    /// one that believes it is a learner: it may have been promoted by an entry it has not yet
    /// received, and refusing would then block elections. A learner's vote never counts,
    /// because candidates count only the voters of their own membership.
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: LogIndex,
        last_term: Term,
        pre: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && term > self.term)
            || (self.cfg.planted_bug == Some(PlantedBug::VoteTwice) && self.role == Role::Follower);
        let grant = can_vote && self.log.is_up_to_date(last_index, last_term);
        let (reply_term, body) = match (pre, grant) {
            (true, true) => (term, MessageBody::PreVoteResponse { reject: false }),
            (true, false) => (self.term, MessageBody::PreVoteResponse { reject: true }),
            (false, grant) => (self.term, MessageBody::VoteResponse { reject: !grant }),
        };
        if grant && !pre {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        self.messages.push(Message { from: self.cfg.id, to: from, term: reply_term, body });
    }

    fn step_candidate(&mut self, from: NodeId, term: Term, body: MessageBody) {
        match body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // A leader of our term exists (§5.2): return to follower and process it.
                self.become_follower(self.term, Some(from));
                self.step_follower(from, body);
            }
            // A grant carries the term asked about; a refusal carries the voter's own term,
            // which may equal ours (the voter is not behind us) — it still counts as a "no".
            MessageBody::PreVoteResponse { reject }
                if self.role == Role::PreCandidate
                    && (term == self.term.next() || (reject && term == self.term)) =>
            {
                self.votes.entry(from).or_insert(!reject);
                self.tally_votes();
            }
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate && term == self.term => {
                self.votes.entry(from).or_insert(!reject);
                self.tally_votes();
            }
            _ => {}
        }
    }

    fn tally_votes(&mut self) {
        let result = {
            let votes = &self.votes;
            self.quorum_membership().vote_result(|id| votes.get(&id).copied())
        };
        match result {
            VoteResult::Won if self.role == Role::PreCandidate => self.start_election(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    fn reset_role_state(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_ticks =
            self.cfg.election_ticks + self.rng.below(u64::from(self.cfg.election_ticks)) as u32;
        self.votes.clear();
        self.progress.clear();
        self.transfer_target = None;
        self.timeout_now_sent = false;
        self.broadcast_pending = false;
        self.read_seq = 0;
        self.round_unsent = false;
        self.rounds.clear();
        self.lease_start_tick = None;
        self.pending_reads.clear();
        self.reads_waiting_commit.clear();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "node {} term would go back from {} to {term}", self.cfg.id, self.term);
        if term > self.term {
            self.vote = None;
        }
        self.reset_role_state();
        self.term = term;
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "node {} became leader from {:?}", self.cfg.id, self.role);
        self.reset_role_state();
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        let next = self.log.last_index().next();
        for id in self.membership.members() {
            self.progress.insert(id, Progress::new(next));
        }
        let me = self.cfg.id;
        let persisted = self.log.persisted;
        let p = self.progress.entry(me).or_insert_with(|| Progress::new(next));
        p.maybe_update(persisted);
        p.become_replicate();
        p.recent_active = true;
        // §5.4.2 / §8: a new leader commits an entry of its own term to learn what is committed
        // and to be able to commit earlier entries.
        self.append_entry(EntryPayload::Empty);
    }

    // ---------------------------------------------------------------- leader

    fn check_can_propose(&self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { leader_hint: self.leader });
        }
        if self.transfer_target.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        let uncommitted = self.log.last_index().0 - self.log.committed.0;
        if uncommitted >= self.cfg.max_uncommitted_entries as u64 {
            return Err(RaftError::ProposalLimit { uncommitted });
        }
        Ok(())
    }

    /// Appends one entry to the leader's log; it is sent with the next `ready()`.
    fn append_entry(&mut self, payload: EntryPayload) -> LogIndex {
        debug_assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index().next();
        let is_membership = matches!(payload, EntryPayload::Membership(_));
        self.log.truncate_and_append(&[Entry { term: self.term, index, payload }]);
        if is_membership {
            self.refresh_membership();
        }
        self.broadcast_pending = true;
        index
    }

    fn step_leader(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::AppendResponse { reject, index, hint_index, hint_term } => {
                let Some(p) = self.progress.get_mut(&from) else {
                    return;
                };
                p.recent_active = true;
                if reject {
                    self.handle_append_rejection(from, index, hint_index, hint_term);
                } else {
                    self.handle_append_success(from, index);
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                let last_index = self.log.last_index();
                let Some(p) = self.progress.get_mut(&from) else {
                    return;
                };
                p.recent_active = true;
                p.probe_sent = false;
                let stalled = p.match_index < last_index && p.match_index == p.match_at_last_heartbeat;
                p.match_at_last_heartbeat = p.match_index;
                if p.state == ProgressState::Replicate && stalled {
                    // The follower is alive, behind, and its match did not move for a whole
                    // heartbeat interval: appends to it were lost (the network may drop
                    // them, e.g. while the follower restarted). Resend from its match.
                    p.become_probe();
                }
                p.read_seq_acked = p.read_seq_acked.max(read_seq.min(self.read_seq));
                let behind = p.match_index < last_index;
                if behind {
                    self.send_append(from, false);
                }
                self.on_round_acked();
            }
            MessageBody::ReadIndex { ctx, lease } => {
                let mode = if lease { ReadMode::Lease } else { ReadMode::ReadIndex };
                self.leader_read(ctx, from, mode);
            }
            _ => {}
        }
    }

    fn handle_append_success(&mut self, from: NodeId, index: LogIndex) {
        let last_index = self.log.last_index();
        // A follower cannot hold more of *our* log than we have.
        let index = index.min(last_index);
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        if !p.maybe_update(index) {
            return;
        }
        match p.state {
            ProgressState::Probe => p.become_replicate(),
            ProgressState::Snapshot if p.match_index >= p.snapshot_index => {
                p.become_probe();
                p.become_replicate();
            }
            _ => {}
        }
        let caught_up = p.match_index == last_index;
        if !self.maybe_commit() {
            // Nothing newly committed to broadcast; keep this follower's pipeline full.
            while self.send_append(from, false) {}
        }
        if self.transfer_target == Some(from) && caught_up {
            self.send_timeout_now(from);
        }
    }

    /// Fast backtracking (thesis §5.3): use the follower's hint to skip a whole conflicting term.
    fn handle_append_rejection(
        &mut self,
        from: NodeId,
        rejected: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) {
        let Some(p) = self.progress.get(&from) else {
            return;
        };
        // A rejection at or below the match index, or (when probing) of anything but the
        // probe in flight, answers an older append: ignore it.
        let stale = rejected <= p.match_index
            || match p.state {
                ProgressState::Replicate => false,
                ProgressState::Probe => rejected != p.next_index.prev(),
                ProgressState::Snapshot => true,
            };
        // A rejection of an index we never sent (beyond our log) is forged or corrupt.
        if stale || rejected == LogIndex::ZERO || rejected > self.log.last_index() {
            return;
        }
        let mut next = hint_index;
        if let Some(term) = hint_term {
            // Find our last entry with a term ≤ the follower's term at the rejected index; if
            // its term matches, everything up to it may match.
            let mut i = rejected.min(self.log.last_index());
            while i > self.log.offset && self.log.term(i).is_some_and(|t| t > term) {
                i = i.prev();
            }
            if self.log.term(i) == Some(term) {
                next = i.next();
            }
        }
        let match_index = p.match_index;
        let next = next.clamp(match_index.next(), rejected);
        if let Some(p) = self.progress.get_mut(&from) {
            if p.state == ProgressState::Replicate {
                p.become_probe();
            }
            p.next_index = next;
            p.probe_sent = false;
        }
        self.send_append(from, false);
    }

    /// Sends one append (or a snapshot) to `to` if its progress allows. With `allow_empty`
    /// an append with no entries is sent to carry the commit index. Returns whether anything
    /// was sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        if to == self.cfg.id {
            return false;
        }
        let Some(p) = self.progress.get(&to) else {
            return false;
        };
        if p.is_paused(self.cfg.max_inflight_msgs) {
            return false;
        }
        let next = p.next_index;
        let prev_index = next.prev();
        let last_index = self.log.last_index();
        if next > last_index.next() {
            // Cannot happen through honest messages; repair rather than send nonsense.
            if let Some(p) = self.progress.get_mut(&to) {
                p.next_index = last_index.next();
            }
            return false;
        }
        let prev_term = self.log.term(prev_index);
        let entries = match prev_term {
            Some(_) => self.log.slice(next, last_index, self.cfg.max_msg_entries, self.cfg.max_msg_bytes),
            None => Err(super::log::Compacted),
        };
        match (prev_term, entries) {
            (Some(prev_term), Ok(entries)) => {
                // A probe goes out even without entries: the follower's answer (or rejection
                // with hints) is how the leader finds where its log ends — e.g. for a member
                // just added with `next` past the end of the leader's log.
                let probing = self.progress.get(&to).is_some_and(|p| p.state == ProgressState::Probe);
                if entries.is_empty() && !allow_empty && !probing {
                    return false;
                }
                let last = entries.last().map(|e| e.index);
                let commit = self.log.committed;
                if let (Some(p), Some(last)) = (self.progress.get_mut(&to), last) {
                    p.sent_entries(last);
                }
                self.send(to, MessageBody::Append { prev_index, prev_term, entries, commit });
                last.is_some()
            }
            _ => {
                // The entries the follower needs are compacted: send the snapshot.
                let Some(snapshot) = self.snapshot.clone() else {
                    debug_assert!(false, "node {} compacted without a snapshot", self.cfg.id);
                    return false;
                };
                let ticks = self.ticks;
                if let Some(p) = self.progress.get_mut(&to) {
                    p.become_snapshot(snapshot.meta.index, ticks);
                }
                self.send(to, MessageBody::InstallSnapshot { snapshot });
                false
            }
        }
    }

    fn broadcast_append(&mut self, allow_empty: bool) {
        let peers: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.cfg.id).collect();
        for id in peers {
            if !self.send_append(id, allow_empty) {
                continue;
            }
            while self.send_append(id, false) {}
        }
    }

    /// Advances the commit index to the highest index a quorum holds — but only by counting
    /// replicas of an entry of the current term (§5.4.2, Figure 8). Returns whether it moved.
    fn maybe_commit(&mut self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let index = {
            let progress = &self.progress;
            self.quorum_membership()
                .committed_index(|id| progress.get(&id).map_or(LogIndex::ZERO, |p| p.match_index))
        };
        if index <= self.log.committed || index > self.log.last_index() {
            return false;
        }
        let current_term = self.log.term(index) == Some(self.term);
        if !current_term && self.cfg.planted_bug != Some(PlantedBug::CommitOldTerm) {
            return false;
        }
        let first_in_term = !self.committed_in_term();
        self.log.commit_to(index);
        self.on_commit_advanced(first_in_term);
        true
    }

    fn on_commit_advanced(&mut self, first_in_term: bool) {
        if self.membership_index <= self.log.committed {
            if self.membership.is_joint() {
                // C_old,new is committed: now propose C_new (§4.3). `membership_index` moves to
                // the new entry, so this happens once.
                if let Ok(next) = self.membership.apply(&ConfChange::LeaveJoint) {
                    self.append_entry(EntryPayload::Membership(next));
                }
            } else if !self.membership.is_voter(self.cfg.id) {
                // C_new is committed and does not include us: step down (§4.2.2).
                self.become_follower(self.term, None);
                return;
            }
        }
        if first_in_term && self.committed_in_term() {
            for (ctx, requester, mode) in mem::take(&mut self.reads_waiting_commit) {
                self.leader_read(ctx, requester, mode);
            }
        }
        // Entries not yet sent go out now (a `LeaveJoint` just appended, say); the new commit
        // index alone does not: it rides on the next append or heartbeat to each follower. An
        // empty append per follower per commit cost every write two more messages, two
        // responses and the wake-ups of all three nodes, to move followers' commit indexes a
        // little sooner — which nothing waits for: clients hear from the leader, and the
        // leader learns of durability from the responses to the entries themselves.
        self.broadcast_append(false);
    }

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn start_heartbeat_round(&mut self) {
        if !self.round_unsent {
            self.read_seq += 1;
            self.rounds.push_back((self.read_seq, self.ticks));
            self.round_unsent = true;
        }
        let peers: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .filter(|(&id, _)| id != self.cfg.id)
            .map(|(&id, p)| (id, p.match_index))
            .collect();
        let (committed, read_seq) = (self.log.committed, self.read_seq);
        for (id, match_index) in peers {
            // Never tell a follower to commit beyond what it is known to hold.
            self.send(id, MessageBody::Heartbeat { commit: committed.min(match_index), read_seq });
        }
        if self.quorum_membership().has_quorum(|id| id == self.cfg.id) {
            // A single-voter group acknowledges its own rounds.
            self.on_round_acked();
        }
    }

    /// A heartbeat acknowledgement arrived: release confirmed reads and extend the lease.
    fn on_round_acked(&mut self) {
        let me = self.cfg.id;
        let acked = {
            let progress = &self.progress;
            let read_seq = self.read_seq;
            self.quorum_membership().quorum_value(|id| {
                if id == me {
                    read_seq
                } else {
                    progress.get(&id).map_or(0, |p| p.read_seq_acked)
                }
            })
        };
        while let Some(&(seq, tick)) = self.rounds.front() {
            if seq > acked {
                break;
            }
            self.lease_start_tick = Some(self.lease_start_tick.map_or(tick, |t| t.max(tick)));
            self.rounds.pop_front();
        }
        while self.pending_reads.front().is_some_and(|r| r.seq <= acked) {
            if let Some(read) = self.pending_reads.pop_front() {
                self.answer_read(read.ctx, read.requester, read.index);
            }
        }
    }

    fn leader_read(&mut self, ctx: u64, requester: NodeId, mode: ReadMode) {
        if !self.committed_in_term() {
            // Until an entry of this term commits, the leader does not know the commit index.
            self.reads_waiting_commit.push((ctx, requester, mode));
            return;
        }
        let index = self.log.committed;
        let single = self.quorum_membership().has_quorum(|id| id == self.cfg.id);
        if single || (mode == ReadMode::Lease && self.lease_valid()) {
            self.answer_read(ctx, requester, index);
            return;
        }
        self.start_heartbeat_round();
        let seq = self.read_seq;
        self.pending_reads.push_back(PendingRead { seq, ctx, requester, index });
    }

    fn answer_read(&mut self, ctx: u64, requester: NodeId, index: LogIndex) {
        if requester == self.cfg.id {
            self.read_states.push(ReadState { ctx, index });
        } else {
            self.send(requester, MessageBody::ReadIndexResponse { ctx, index });
        }
    }

    // ---------------------------------------------------------------- follower

    fn step_follower(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                self.leader_contact_tick = Some(self.ticks);
                self.handle_append(from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                self.leader_contact_tick = Some(self.ticks);
                let commit = commit.min(self.log.last_index());
                self.log.commit_to(commit);
                self.send(from, MessageBody::HeartbeatResponse { read_seq });
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                self.leader_contact_tick = Some(self.ticks);
                self.handle_snapshot(from, snapshot);
            }
            MessageBody::TimeoutNow => self.campaign(true),
            MessageBody::ReadIndex { ctx, lease } => {
                if let Some(leader) = self.leader {
                    if leader != from {
                        let body = MessageBody::ReadIndex { ctx, lease };
                        self.messages.push(Message { from, to: leader, term: self.term, body });
                    }
                }
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                self.read_states.push(ReadState { ctx, index: index.min(LogIndex(LOG_INDEX_MAX)) });
            }
            _ => {}
        }
    }

    /// AppendEntries receiver rules (Figure 2).
    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: &[Entry],
        commit: LogIndex,
    ) {
        if prev_index < self.log.committed {
            // Everything up to our commit index already matches the leader (Log Matching):
            // report that, so the leader can continue from there.
            let index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse { reject: false, index, hint_index: index, hint_term: None },
            );
            return;
        }
        let matched = self.log.matches(prev_index, prev_term)
            || (self.cfg.planted_bug == Some(PlantedBug::SkipLogCheck)
                && self.log.term(prev_index).is_some());
        if !matched {
            let (hint_index, hint_term) = match self.log.term(prev_index) {
                None => (self.log.last_index().next().min(prev_index), None),
                Some(term) => {
                    // The first index of the conflicting term, not below our commit index.
                    let mut i = prev_index;
                    while i.prev() > self.log.committed && self.log.term(i.prev()) == Some(term) {
                        i = i.prev();
                    }
                    (i, Some(term))
                }
            };
            self.send(
                from,
                MessageBody::AppendResponse { reject: true, index: prev_index, hint_index, hint_term },
            );
            return;
        }
        let last_new = prev_index.plus(entries.len() as u64);
        if let Some(changed) = self.log.append_after_match(entries) {
            let membership_touched = changed <= self.membership_index
                || entries.iter().any(|e| matches!(e.payload, EntryPayload::Membership(_)));
            if membership_touched {
                self.refresh_membership();
            }
        }
        self.log.commit_to(commit.min(last_new));
        self.send(
            from,
            MessageBody::AppendResponse {
                reject: false,
                index: last_new,
                hint_index: last_new,
                hint_term: None,
            },
        );
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        let meta = &snapshot.meta;
        if meta.index <= self.log.committed {
            let index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse { reject: false, index, hint_index: index, hint_term: None },
            );
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // We hold the snapshot's last entry, hence (Log Matching) everything before it.
            self.log.commit_to(meta.index);
        } else {
            self.log.restore(meta.index, meta.term);
            self.snapshot_membership = meta.membership.clone();
            self.snapshot = Some(if self.cfg.host_snapshot_data {
                // The host installs the data; sending it on later reads it back from there.
                Snapshot { meta: snapshot.meta.clone(), data: Vec::new() }
            } else {
                snapshot.clone()
            });
            self.pending_snapshot = Some(snapshot);
            self.refresh_membership();
        }
        self.send(
            from,
            MessageBody::AppendResponse { reject: false, index, hint_index: index, hint_term: None },
        );
    }

    // ---------------------------------------------------------------- membership

    /// Recomputes the membership from the log: it is set by the last membership entry appended,
    /// committed or not (§4.1: a server uses the latest configuration in its log).
    fn refresh_membership(&mut self) {
        let found = self.log.entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some((e.index, m.clone())),
            _ => None,
        });
        let (index, membership) = found.unwrap_or((self.log.offset, self.snapshot_membership.clone()));
        self.membership = membership;
        self.membership_index = index;
        if self.role == Role::Leader {
            let next = self.log.last_index().next();
            let members = self.membership.members();
            let me = self.cfg.id;
            self.progress.retain(|id, _| *id == me || members.contains(id));
            for id in members {
                self.progress.entry(id).or_insert_with(|| {
                    let mut p = Progress::new(next);
                    p.recent_active = true;
                    p
                });
            }
        }
    }

    /// The metadata of a snapshot at `index`, a committed index at or after this replica's
    /// snapshot (for a host that reads snapshot data at its state machine's applied index,
    /// which may be ahead of the core's until `advance`: `Config::host_snapshot_data`).
    /// `None` outside that span.
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index < self.log.offset || index > self.log.committed {
            return None;
        }
        let term = self.log.term(index)?;
        Some(SnapshotMeta { index, term, membership: self.membership_at(index) })
    }

    fn membership_at(&self, index: LogIndex) -> Membership {
        self.log
            .entries
            .iter()
            .take_while(|e| e.index <= index)
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some(m),
                _ => None,
            })
            .last()
            .cloned()
            .unwrap_or_else(|| self.snapshot_membership.clone())
    }

    /// The membership used for quorum decisions. Normally the membership itself; the planted
    /// bug `JointSingleQuorum` drops C_old from joint decisions.
    fn quorum_membership(&self) -> std::borrow::Cow<'_, Membership> {
        if self.cfg.planted_bug == Some(PlantedBug::JointSingleQuorum) && self.membership.is_joint() {
            let mut m = self.membership.clone();
            m.voters_outgoing.clear();
            return std::borrow::Cow::Owned(m);
        }
        std::borrow::Cow::Borrowed(&self.membership)
    }

    // ---------------------------------------------------------------- helpers

    fn send_timeout_now(&mut self, to: NodeId) {
        self.timeout_now_sent = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message { from: self.cfg.id, to, term: self.term, body });
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader: self.leader }
    }

    fn debug_assert_not_in_ready(&self) {
        debug_assert!(self.in_ready.is_none(), "node {}: call between ready() and advance()", self.cfg.id);
    }

    fn debug_check_invariants(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// O(n) consistency checks; the simulator calls this after every step.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        match self.role {
            Role::Leader => {
                assert_eq!(
                    self.leader,
                    Some(self.cfg.id),
                    "node {}: leader without self as leader",
                    self.cfg.id
                );
                assert!(
                    self.progress.contains_key(&self.cfg.id),
                    "node {}: leader without own progress",
                    self.cfg.id
                );
                for (id, p) in &self.progress {
                    assert!(
                        p.match_index < p.next_index,
                        "node {} progress {id}: match {} next {}",
                        self.cfg.id,
                        p.match_index,
                        p.next_index
                    );
                    assert!(
                        p.match_index <= self.log.last_index(),
                        "node {} progress {id}: match beyond log",
                        self.cfg.id
                    );
                }
            }
            Role::Candidate => assert_eq!(
                self.vote,
                Some(self.cfg.id),
                "node {}: candidate not voting for itself",
                self.cfg.id
            ),
            _ => assert!(self.progress.is_empty(), "node {}: non-leader with progress", self.cfg.id),
        }
        assert!(
            self.membership_index <= self.log.last_index(),
            "node {}: membership index beyond the log",
            self.cfg.id
        );
        if self.membership_index < self.log.offset {
            assert_eq!(
                self.membership, self.snapshot_membership,
                "node {}: membership differs from the snapshot's",
                self.cfg.id
            );
        }
    }
}
