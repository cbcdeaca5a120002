//! Routing a client operation to the leader of its range, with retries.
//!
//! `ClusterBackend` is what the RESP gateway (and later the native client) calls. For each key
//! it finds the range, asks the node for the range's leader, and runs the operation there —
//! locally, or forwarded one hop over the peer transport. `NotLeader` answers carry a hint that
//! the next attempt uses; "no leader yet" and unreachable leaders are retried with capped
//! backoff until a deadline.
//!
//! Writes whose outcome is unknown (a forwarded write that timed out) are never retried: a
//! retry could apply an INCR twice. The client gets an error that says so.

use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::ids::RangeId;
use flotilla_engine::kv::{Command, CommandResult};
use flotilla_engine::node::Node;
use flotilla_engine::raft::NodeId;
use flotilla_engine::storage::span_overlap;
use flotilla_engine::store::{KvError, ReadOp, ReadResult};
use tokio::time::Instant;

use crate::resp::{BackendError, BoxFuture, KvBackend, SetCondition};

/// How long one client operation may keep retrying.
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Pairs returned per range per scan call at most.
const SCAN_BATCH_MAX: usize = 1_000;

#[derive(Debug, Clone)]
pub struct ClusterBackend {
    node: Arc<Node>,
}

impl ClusterBackend {
    pub fn new(node: Arc<Node>) -> ClusterBackend {
        ClusterBackend { node }
    }

    fn range_of(&self, key: &[u8]) -> Result<RangeId, BackendError> {
        self.node
            .store
            .range_for(key)
            .map(|r| r.id)
            .ok_or_else(|| BackendError::Internal("no range covers the key".into()))
    }

    /// Runs `attempt` against the leader of `range` until it succeeds, fails for good, or the
    /// deadline passes.
    async fn at_leader<T, F, Fut>(
        &self,
        range: RangeId,
        retry_unknown: bool,
        attempt: F,
    ) -> Result<T, BackendError>
    where
        F: Fn(NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        let deadline = Instant::now() + OPERATION_DEADLINE;
        let mut backoff = BACKOFF_FIRST;
        let mut hint: Option<NodeId> = None;
        let mut last_error = String::from("no leader elected yet");
        loop {
            // A leader on a node presumed dead is no leader: wait for the election instead of
            // sending it requests that can only time out.
            let leader = hint
                .take()
                .or_else(|| self.node.store.leader_of(range))
                .filter(|&l| l == self.node.id || !self.node.store.peer_dead(l));
            if let Some(leader) = leader {
                match attempt(leader).await {
                    Ok(value) => return Ok(value),
                    Err(KvError::NotLeader { leader_hint, .. }) => {
                        last_error = format!("{leader} no longer leads {range}");
                        if leader_hint.is_some_and(|h| h != leader) {
                            hint = leader_hint;
                            continue;
                        }
                    }
                    Err(KvError::Unknown(what)) if !retry_unknown => {
                        return Err(BackendError::Unavailable(format!(
                            "outcome unknown, not retried: {what}"
                        )));
                    }
                    Err(KvError::Invalid(what)) => return Err(BackendError::Invalid(what)),
                    Err(KvError::Storage(what)) => return Err(BackendError::Internal(what)),
                    Err(e) => last_error = e.to_string(),
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(BackendError::Unavailable(format!(
                    "{range}: {last_error} (gave up after {} s)",
                    OPERATION_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn command(&self, key: &[u8], command: Command) -> Result<CommandResult, BackendError> {
        command.validate().map_err(BackendError::TooLarge)?;
        let range = self.range_of(key)?;
        let node = &self.node;
        self.at_leader(range, false, |leader| node.propose_at(leader, range, command.clone())).await
    }

    async fn read(&self, range: RangeId, op: ReadOp) -> Result<ReadResult, BackendError> {
        let node = &self.node;
        self.at_leader(range, true, |leader| node.read_at(leader, range, op.clone())).await
    }
}

fn rejected<T>(
    result: CommandResult,
    pick: impl FnOnce(CommandResult) -> Option<T>,
) -> Result<T, BackendError> {
    match result {
        CommandResult::Rejected(why) => Err(BackendError::Invalid(why)),
        other => {
            let text = format!("{other:?}");
            pick(other).ok_or_else(|| BackendError::Internal(format!("unexpected result {text}")))
        }
    }
}

impl KvBackend for ClusterBackend {
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(async move {
            let range = self.range_of(&key)?;
            match self.read(range, ReadOp::Get { key }).await? {
                ReadResult::Value(v) => Ok(v),
                ReadResult::Pairs(_) => Err(BackendError::Internal("unexpected scan result".into())),
            }
        })
    }

    fn set(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCondition,
    ) -> BoxFuture<'_, Result<bool, BackendError>> {
        Box::pin(async move {
            let result = self.command(&key.clone(), Command::Put { key, value, condition: cond }).await?;
            rejected(result, |r| match r {
                CommandResult::Written(w) => Some(w),
                _ => None,
            })
        })
    }

    fn delete(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            // One command per range: a command never spans ranges.
            let mut by_range: std::collections::BTreeMap<RangeId, Vec<Vec<u8>>> = Default::default();
            for key in keys {
                by_range.entry(self.range_of(&key)?).or_default().push(key);
            }
            let mut deleted = 0;
            for (_, keys) in by_range {
                let first = keys[0].clone();
                let result = self.command(&first, Command::Delete { keys }).await?;
                deleted += rejected(result, |r| match r {
                    CommandResult::Deleted(n) => Some(n),
                    _ => None,
                })?;
            }
            Ok(deleted)
        })
    }

    fn incr_by(&self, key: Vec<u8>, delta: i64) -> BoxFuture<'_, Result<i64, BackendError>> {
        Box::pin(async move {
            let result = self.command(&key.clone(), Command::IncrBy { key, delta }).await?;
            rejected(result, |r| match r {
                CommandResult::Integer(v) => Some(v),
                _ => None,
            })
        })
    }

    fn append(&self, key: Vec<u8>, suffix: Vec<u8>) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            let result = self.command(&key.clone(), Command::Append { key, suffix }).await?;
            rejected(result, |r| match r {
                CommandResult::Length(n) => Some(n),
                _ => None,
            })
        })
    }

    fn scan(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Vec<u8>, Vec<u8>)>, BackendError>> {
        Box::pin(async move {
            let end = end.unwrap_or_default();
            let mut out = Vec::new();
            let mut ranges: Vec<_> = self.node.store.ranges().to_vec();
            ranges.sort_by(|a, b| a.start.cmp(&b.start));
            for r in ranges {
                if out.len() >= limit {
                    break;
                }
                // Ranges entirely before `start` or at/after `end` have nothing to scan.
                let Some((mut from, to)) = span_overlap(&r.start, &r.end, &start, &end) else { continue };
                // Page through the range until it is exhausted or the limit is reached.
                while out.len() < limit {
                    let want = (limit - out.len()).min(SCAN_BATCH_MAX);
                    let op = ReadOp::Scan { start: from.clone(), end: to.clone(), limit: want as u32 };
                    let pairs = match self.read(r.id, op).await? {
                        ReadResult::Pairs(pairs) => pairs,
                        ReadResult::Value(_) => {
                            return Err(BackendError::Internal("unexpected get result".into()))
                        }
                    };
                    let full = pairs.len() == want;
                    if let Some((last, _)) = pairs.last() {
                        from = last.clone();
                        from.push(0);
                    }
                    out.extend(pairs);
                    if !full {
                        break;
                    }
                }
            }
            out.truncate(limit);
            Ok(out)
        })
    }

    fn info(&self) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let status = self.node.store.status();
            let me = self.node.id.0;
            let led = status.ranges.iter().filter(|r| r.leader == Some(me)).count();
            vec![
                ("node_id".into(), me.to_string()),
                ("listen".into(), self.node.listen.to_string()),
                ("ranges".into(), status.ranges.len().to_string()),
                ("ranges_led".into(), led.to_string()),
                ("ranges_quiesced".into(), status.ranges.iter().filter(|r| r.quiesced).count().to_string()),
            ]
        })
    }
}
