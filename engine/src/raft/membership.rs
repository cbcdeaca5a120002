//! Group membership, joint consensus, and quorum arithmetic.
//!
//! A membership is either simple (`voters_outgoing` empty) or joint (C_old,new: `voters_outgoing`
//! is C_old, `voters` is C_new). In a joint membership every decision — an election, a commit,
//! a read confirmation, a check-quorum — needs a majority of *both* halves (§6 of the Raft
//! paper); that is what makes any change of voters safe, however many voters it touches.
//!
//! Learners receive the log but never campaign, and their votes and acknowledgements never
//! count toward any quorum. A voter demoted to learner stays an outgoing voter while the
//! membership is joint and sits in `learners_next`; it becomes a learner when the joint
//! membership is left.
//!
//! Architecture invariant: the four sets satisfy `voters ∩ learners = ∅`,
//! `voters_outgoing ∩ learners = ∅`, `learners_next ⊆ voters_outgoing`, `voters ≠ ∅`, and
//! `learners_next = ∅` unless joint. `Membership::validate` checks them; the core refuses any
//! membership that fails it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::types::{LogIndex, NodeId};

/// The configuration of a Raft group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub voters_outgoing: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub learners_next: BTreeSet<NodeId>,
}

/// One change to a membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeKind {
    AddVoter,
    AddLearner,
    Remove,
}

/// A membership change request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// Changes applied together. If they alter the voters the group enters a joint membership
    /// and the leader leaves it automatically once the joint entry commits; if they only touch
    /// learners they take effect directly.
    Change(Vec<(NodeId, ConfChangeKind)>),
    /// Leave the joint membership (normally proposed by the leader itself).
    LeaveJoint,
}

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

impl Membership {
    /// A simple membership of the given voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership { voters: voters.into_iter().collect(), ..Membership::default() }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Voters of either half: the nodes that may campaign and whose votes count.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// A learner in the current membership, not also an (outgoing) voter.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Every member, voters and learners, in ascending order, each once.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.voters_outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all.extend(self.learners_next.iter().copied());
        all
    }

    /// Voters of either half, each once.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.voters_outgoing.iter().copied());
        all
    }

    pub fn len(&self) -> usize {
        self.members().len()
    }

    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.voters_outgoing.is_empty() && self.learners.is_empty()
    }

    /// Checks the architecture invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Err("no voters".into());
        }
        if self.voters.contains(&NodeId(0))
            || self.voters_outgoing.contains(&NodeId(0))
            || self.learners.contains(&NodeId(0))
            || self.learners_next.contains(&NodeId(0))
        {
            return Err("node id 0 is reserved".into());
        }
        if let Some(id) = self.voters.intersection(&self.learners).next() {
            return Err(format!("{id} is both voter and learner"));
        }
        if let Some(id) = self.voters_outgoing.intersection(&self.learners).next() {
            return Err(format!("{id} is both outgoing voter and learner"));
        }
        if !self.learners_next.is_subset(&self.voters_outgoing) {
            return Err("learners_next must be outgoing voters".into());
        }
        if !self.is_joint() && !self.learners_next.is_empty() {
            return Err("learners_next outside a joint membership".into());
        }
        Ok(())
    }

    /// The membership that results from `change`, or why it cannot be applied.
    pub fn apply(&self, change: &ConfChange) -> Result<Membership, String> {
        match change {
            ConfChange::LeaveJoint => {
                if !self.is_joint() {
                    return Err("not in a joint membership".into());
                }
                let mut next = self.clone();
                next.voters_outgoing.clear();
                let demoted = std::mem::take(&mut next.learners_next);
                next.learners.extend(demoted);
                next.validate()?;
                Ok(next)
            }
            ConfChange::Change(changes) => {
                if self.is_joint() {
                    return Err("a joint membership is still in effect".into());
                }
                if changes.is_empty() {
                    return Err("empty change".into());
                }
                let mut seen = BTreeSet::new();
                let mut voters = self.voters.clone();
                let mut learners = self.learners.clone();
                for (id, kind) in changes {
                    if *id == NodeId(0) {
                        return Err("node id 0 is reserved".into());
                    }
                    if !seen.insert(*id) {
                        return Err(format!("{id} named twice in one change"));
                    }
                    match kind {
                        ConfChangeKind::AddVoter => {
                            if voters.contains(id) {
                                return Err(format!("{id} is already a voter"));
                            }
                            learners.remove(id);
                            voters.insert(*id);
                        }
                        ConfChangeKind::AddLearner => {
                            if learners.contains(id) {
                                return Err(format!("{id} is already a learner"));
                            }
                            voters.remove(id);
                            learners.insert(*id);
                        }
                        ConfChangeKind::Remove => {
                            if !voters.remove(id) && !learners.remove(id) {
                                return Err(format!("{id} is not a member"));
                            }
                        }
                    }
                }
                if voters.is_empty() {
                    return Err("the change would leave no voters".into());
                }
                let next = if voters == self.voters {
                    // Only learners changed: no quorum is affected, so no joint phase is needed.
                    Membership { voters, learners, ..Membership::default() }
                } else {
                    let outgoing = self.voters.clone();
                    let learners_next: BTreeSet<NodeId> = learners.intersection(&outgoing).copied().collect();
                    let learners = learners.difference(&learners_next).copied().collect();
                    Membership { voters, voters_outgoing: outgoing, learners, learners_next }
                };
                next.validate()?;
                Ok(next)
            }
        }
    }

    /// The highest index known to be stored on a quorum, given each voter's match index
    /// (`match_of`). In a joint membership it is the lower of the two halves' values; an empty
    /// half (the outgoing half of a simple membership) imposes no limit.
    pub fn committed_index(&self, match_of: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let incoming = majority_value(&self.voters, |id| match_of(id).0);
        let outgoing = majority_value(&self.voters_outgoing, |id| match_of(id).0);
        LogIndex(incoming.min(outgoing))
    }

    /// Like `committed_index`, for any monotone per-voter counter (heartbeat round acks).
    pub fn quorum_value(&self, value_of: impl Fn(NodeId) -> u64) -> u64 {
        majority_value(&self.voters, &value_of).min(majority_value(&self.voters_outgoing, &value_of))
    }

    /// Counts votes: `granted(id)` is `Some(true)` for a grant, `Some(false)` for a rejection,
    /// `None` if the voter has not answered. Only voters are consulted.
    pub fn vote_result(&self, granted: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let incoming = majority_vote(&self.voters, &granted);
        let outgoing = majority_vote(&self.voters_outgoing, &granted);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the nodes for which `active(id)` holds include a quorum.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|id| Some(active(id))) == VoteResult::Won
    }
}

/// The largest value that at least a majority of `voters` have reached; `u64::MAX` for an empty
/// set, so that an empty half never limits a joint decision.
fn majority_value(voters: &BTreeSet<NodeId>, value_of: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut values: Vec<u64> = voters.iter().map(|&id| value_of(id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters a majority is n/2 + 1; the (n/2)-th largest value (0-based) is held by
    // that many voters.
    values.get(voters.len() / 2).copied().unwrap_or(0)
}

fn majority_vote(voters: &BTreeSet<NodeId>, granted: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0usize, 0usize);
    for &id in voters {
        match granted(id) {
            Some(true) => yes += 1,
            None => missing += 1,
            Some(false) => {}
        }
    }
    let majority = voters.len() / 2 + 1;
    if yes >= majority {
        VoteResult::Won
    } else if yes + missing >= majority {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|&i| NodeId(i)).collect()
    }

    #[test]
    fn majority_of_three_needs_two() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        assert_eq!(m.committed_index(|id| LogIndex(if id == NodeId(1) { 5 } else { 3 })), LogIndex(3));
        assert_eq!(
            m.committed_index(|id| LogIndex(match id.0 {
                1 => 9,
                2 => 7,
                _ => 1,
            })),
            LogIndex(7)
        );
    }

    #[test]
    fn joint_membership_needs_both_majorities() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        let joint = m
            .apply(&ConfChange::Change(vec![
                (NodeId(4), ConfChangeKind::AddVoter),
                (NodeId(5), ConfChangeKind::AddVoter),
                (NodeId(2), ConfChangeKind::Remove),
                (NodeId(3), ConfChangeKind::Remove),
            ]))
            .unwrap();
        assert!(joint.is_joint());
        // C_new = {1,4,5} has a majority at 10, C_old = {1,2,3} only at 2.
        let v = joint.committed_index(|id| LogIndex(if [1, 4, 5].contains(&id.0) { 10 } else { 2 }));
        assert_eq!(v, LogIndex(2));
        assert_eq!(joint.vote_result(|id| Some([1, 4, 5].contains(&id.0))), VoteResult::Lost);
        assert_eq!(joint.vote_result(|id| Some([1, 2, 4].contains(&id.0))), VoteResult::Won);
    }

    #[test]
    fn learners_only_change_skips_joint() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        let next = m.apply(&ConfChange::Change(vec![(NodeId(4), ConfChangeKind::AddLearner)])).unwrap();
        assert!(!next.is_joint());
        assert!(next.is_learner(NodeId(4)));
    }

    #[test]
    fn demotion_goes_through_learners_next() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        let joint = m.apply(&ConfChange::Change(vec![(NodeId(3), ConfChangeKind::AddLearner)])).unwrap();
        assert!(joint.is_joint());
        assert!(joint.is_voter(NodeId(3)));
        assert!(joint.learners_next.contains(&NodeId(3)));
        let done = joint.apply(&ConfChange::LeaveJoint).unwrap();
        assert!(!done.is_voter(NodeId(3)));
        assert!(done.is_learner(NodeId(3)));
    }

    #[test]
    fn change_that_removes_every_voter_is_refused() {
        let m = Membership::with_voters(ids(&[1]));
        assert!(m.apply(&ConfChange::Change(vec![(NodeId(1), ConfChangeKind::Remove)])).is_err());
    }
}
