//! The leader's view of one follower: how far its log matches, what to send next, and whether
//! it is being probed, pipelined to, or sent a snapshot.
//!
//! - `Probe`: the follower's position is unknown; one append is in flight at a time, and the
//!   leader backs `next` off using the follower's conflict hints until an append succeeds.
//! - `Replicate`: the position is known; appends are pipelined optimistically, at most
//!   `max_inflight_msgs` unacknowledged at once (the in-flight window).
//! - `Snapshot`: the entries the follower needs are compacted; a snapshot is on its way and
//!   nothing else is sent until it is acknowledged or times out.
//!
//! Invariant: `match_index < next_index`.

use std::collections::VecDeque;

use super::types::LogIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// In `Probe`: an append is outstanding, wait for its answer or a heartbeat response.
    pub probe_sent: bool,
    /// In `Replicate`: last index of every unacknowledged append, oldest first.
    pub inflight: VecDeque<LogIndex>,
    /// In `Snapshot`: the index of the snapshot sent, and the leader tick it was sent at.
    pub snapshot_index: LogIndex,
    pub snapshot_sent_tick: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest heartbeat round (read_seq) this follower acknowledged in the current term.
    pub read_seq_acked: u64,
    /// `match_index` when the previous heartbeat response arrived: if a follower that is behind
    /// answers two heartbeats without its match moving, appends to it were lost.
    pub match_at_last_heartbeat: LogIndex,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            snapshot_index: LogIndex::ZERO,
            snapshot_sent_tick: 0,
            recent_active: false,
            read_seq_acked: 0,
            match_at_last_heartbeat: LogIndex::ZERO,
        }
    }

    /// Whether the leader must hold off sending appends.
    pub fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight,
            ProgressState::Snapshot => true,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot the follower holds at least the snapshot; probe from there.
        if self.state == ProgressState::Snapshot {
            self.next_index = self.match_index.max(self.snapshot_index).next();
        } else {
            self.next_index = self.match_index.next();
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, index: LogIndex, tick: u64) {
        self.state = ProgressState::Snapshot;
        self.snapshot_index = index;
        self.snapshot_sent_tick = tick;
        self.inflight.clear();
    }

    /// Records that the follower holds everything up to `index`. Returns whether the match
    /// index moved.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// Records an append whose last entry is `last` as sent.
    pub fn sent_entries(&mut self, last: LogIndex) {
        match self.state {
            ProgressState::Replicate => {
                self.next_index = last.next();
                self.inflight.push_back(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}
