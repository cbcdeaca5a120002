//! The range state machine: the commands a Raft entry of a range carries and how applying them
//! changes the data. Raw (non-MVCC) key-value for now; MVCC and transactions replace it later.
//!
//! Applying is deterministic: the result depends only on the command and the data, so every
//! replica computes the same result (and the leader returns it to the client). A command that
//! cannot apply (INCR of a non-integer) is still a committed entry; it changes nothing and
//! yields `CommandResult::Rejected` — identically on every replica.

use serde::{Deserialize, Serialize};

use crate::storage::{Round, StorageError};

/// Keys larger than this are refused before they reach the log.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Values larger than this are refused before they reach the log.
pub const VALUE_BYTES_MAX: usize = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    Always,
    IfAbsent,
    IfPresent,
}

/// A write to one range, replicated through its Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        #[serde(with = "crate::bytes_serde")]
        key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        value: Vec<u8>,
        condition: SetCondition,
    },
    Delete {
        #[serde(with = "crate::bytes_serde::list")]
        keys: Vec<Vec<u8>>,
    },
    IncrBy {
        #[serde(with = "crate::bytes_serde")]
        key: Vec<u8>,
        delta: i64,
    },
    Append {
        #[serde(with = "crate::bytes_serde")]
        key: Vec<u8>,
        #[serde(with = "crate::bytes_serde")]
        suffix: Vec<u8>,
    },
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Put: whether the write happened (a failed condition is `false`).
    Written(bool),
    /// Delete: how many keys existed.
    Deleted(u64),
    /// IncrBy: the new value.
    Integer(i64),
    /// Append: the new length.
    Length(u64),
    /// The command was valid but could not apply to the current data.
    Rejected(String),
}

impl Command {
    /// Every key the command touches (all must lie in the range it is proposed to).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Command::Put { key, .. } | Command::IncrBy { key, .. } | Command::Append { key, .. } => vec![key],
            Command::Delete { keys } => keys.iter().map(Vec::as_slice).collect(),
        }
    }

    /// Size limits, checked before proposing.
    pub fn validate(&self) -> Result<(), String> {
        for key in self.keys() {
            if key.len() > KEY_BYTES_MAX {
                return Err(format!("key of {} bytes exceeds the limit of {KEY_BYTES_MAX}", key.len()));
            }
        }
        let value_len = match self {
            Command::Put { value, .. } => value.len(),
            Command::Append { suffix, .. } => suffix.len(),
            _ => 0,
        };
        if value_len > VALUE_BYTES_MAX {
            return Err(format!("value of {value_len} bytes exceeds the limit of {VALUE_BYTES_MAX}"));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain enum of byte vectors into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Command> {
        postcard::from_bytes(bytes).ok()
    }

    /// Applies the command inside the round's write transaction.
    pub fn apply(&self, round: &mut Round) -> Result<CommandResult, StorageError> {
        Ok(match self {
            Command::Put { key, value, condition } => {
                let allowed = match condition {
                    SetCondition::Always => true,
                    SetCondition::IfAbsent => round.get(key)?.is_none(),
                    SetCondition::IfPresent => round.get(key)?.is_some(),
                };
                if allowed {
                    round.put(key, value)?;
                }
                CommandResult::Written(allowed)
            }
            Command::Delete { keys } => {
                let mut deleted = 0;
                for key in keys {
                    deleted += u64::from(round.delete(key)?);
                }
                CommandResult::Deleted(deleted)
            }
            Command::IncrBy { key, delta } => {
                let current = match round.get(key)? {
                    None => 0,
                    Some(bytes) => match std::str::from_utf8(&bytes).ok().and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(v) => v,
                        None => {
                            return Ok(CommandResult::Rejected(
                                "value is not an integer or out of range".into(),
                            ))
                        }
                    },
                };
                match current.checked_add(*delta) {
                    Some(next) => {
                        round.put(key, next.to_string().as_bytes())?;
                        CommandResult::Integer(next)
                    }
                    None => CommandResult::Rejected("increment or decrement would overflow".into()),
                }
            }
            Command::Append { key, suffix } => {
                let mut value = round.get(key)?.unwrap_or_default();
                if value.len() + suffix.len() > VALUE_BYTES_MAX {
                    return Ok(CommandResult::Rejected(format!(
                        "string would exceed the value limit of {VALUE_BYTES_MAX} bytes"
                    )));
                }
                value.extend_from_slice(suffix);
                round.put(key, &value)?;
                CommandResult::Length(value.len() as u64)
            }
        })
    }
}
