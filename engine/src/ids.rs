//! Identifiers shared by every layer above the Raft core.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a range (a contiguous key span) and therefore its Raft group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RangeId(pub u64);

impl fmt::Display for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}
