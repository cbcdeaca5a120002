//! The two scenarios that are not a plain workload: `failover` (kill a leader mid-run, measure
//! the hole and the way back) and `idle-ranges` (no load; what a node costs just hosting
//! ranges: CPU, memory, peer messages).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::admin;
use crate::procfs::{self, ProcSample};
use crate::run::{new_histogram, OpRecord};

/// Width of the windows the recovery is judged in (by op start time).
const RECOVERY_WINDOW_US: u64 = 500_000;
/// Step between successive recovery windows.
const RECOVERY_STEP_US: u64 = 50_000;
/// Ops a window needs before its p99 means anything.
const RECOVERY_WINDOW_OPS_MIN: usize = 20;
/// Throughput is judged in buckets of this width...
const THROUGHPUT_BUCKET_US: u64 = 100_000;
/// ...and counts as recovered once this many buckets in a row reach half the pre-kill rate.
const THROUGHPUT_RECOVERED_BUCKETS: usize = 5;

/// What the failover scenario found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailoverSummary {
    pub killed_pid: u32,
    /// When the kill happened, ms into the measurement window.
    pub killed_at_ms: f64,
    /// p99 of the ops that completed before the kill.
    pub baseline_p99_ms: f64,
    /// The longest time after the kill in which no op completed successfully.
    pub unavailable_ms: f64,
    /// From the kill until throughput is back to half its pre-kill rate (in 100 ms buckets, for
    /// 500 ms in a row); `None` if that never happened in the run.
    pub degraded_ms: Option<f64>,
    /// From the kill to the start of the first window of ops (500 ms, by start time) that all
    /// succeeded with a p99 at or below the baseline; `None` if that never happened in the run.
    pub back_to_baseline_p99_ms: Option<f64>,
    pub errors_after_kill: u64,
    pub max_latency_after_kill_ms: f64,
}

/// Analyzes the op log of a run in which `killed_at_us` (µs into the window) a server died.
pub fn analyze_failover(
    log: &[OpRecord],
    killed_at_us: u64,
    window_us: u64,
    killed_pid: u32,
) -> FailoverSummary {
    let mut baseline = new_histogram();
    for op in log.iter().filter(|op| op.ok && op.done_us < killed_at_us) {
        baseline.saturating_record(op.latency_us.max(1));
    }
    let baseline_p99_us = baseline.value_at_quantile(0.99);

    // The longest stretch without a success, from the kill to the end of the window.
    let mut previous = killed_at_us;
    let mut longest_gap_us = 0;
    for op in log.iter().filter(|op| op.ok && op.done_us > killed_at_us) {
        longest_gap_us = longest_gap_us.max(op.done_us - previous);
        previous = op.done_us;
    }
    longest_gap_us = longest_gap_us.max(window_us.saturating_sub(previous));

    // Successes per bucket: before the kill (the baseline rate) and after it.
    let buckets_before = (killed_at_us / THROUGHPUT_BUCKET_US).max(1);
    let rate_before =
        log.iter().filter(|op| op.ok && op.done_us < buckets_before * THROUGHPUT_BUCKET_US).count() as f64
            / buckets_before as f64;
    let buckets_after = window_us.saturating_sub(killed_at_us).div_ceil(THROUGHPUT_BUCKET_US) as usize;
    let mut counts_after = vec![0u64; buckets_after];
    for op in log.iter().filter(|op| op.ok && op.done_us >= killed_at_us) {
        if let Some(count) =
            counts_after.get_mut(((op.done_us - killed_at_us) / THROUGHPUT_BUCKET_US) as usize)
        {
            *count += 1;
        }
    }
    let degraded_us = counts_after
        .windows(THROUGHPUT_RECOVERED_BUCKETS)
        .position(|run| run.iter().all(|&c| c as f64 >= rate_before / 2.0))
        .map(|bucket| bucket as u64 * THROUGHPUT_BUCKET_US);

    let after: Vec<&OpRecord> = log.iter().filter(|op| op.done_us > killed_at_us).collect();
    let errors_after_kill = after.iter().filter(|op| !op.ok).count() as u64;
    let max_latency_after_kill_us = after.iter().map(|op| op.latency_us).max().unwrap_or(0);

    // Ops by start time; the first window after the kill in which every op succeeded and p99
    // is back at the baseline.
    let mut started: Vec<(u64, u64, bool)> = log
        .iter()
        .map(|op| (op.done_us.saturating_sub(op.latency_us), op.latency_us, op.ok))
        .filter(|(start, _, _)| *start >= killed_at_us)
        .collect();
    started.sort_unstable();
    let mut back = None;
    let mut window_start = killed_at_us;
    while window_start + RECOVERY_WINDOW_US <= window_us && back.is_none() {
        let lo = started.partition_point(|op| op.0 < window_start);
        let hi = started.partition_point(|op| op.0 < window_start + RECOVERY_WINDOW_US);
        let ops = &started[lo..hi];
        if ops.len() >= RECOVERY_WINDOW_OPS_MIN && ops.iter().all(|op| op.2) {
            let mut h = new_histogram();
            for op in ops {
                h.saturating_record(op.1.max(1));
            }
            if h.value_at_quantile(0.99) <= baseline_p99_us {
                back = Some(window_start - killed_at_us);
            }
        }
        window_start += RECOVERY_STEP_US;
    }
    let ms = |us: u64| us as f64 / 1_000.0;
    FailoverSummary {
        killed_pid,
        killed_at_ms: ms(killed_at_us),
        baseline_p99_ms: ms(baseline_p99_us),
        unavailable_ms: ms(longest_gap_us),
        degraded_ms: degraded_us.map(ms),
        back_to_baseline_p99_ms: back.map(ms),
        errors_after_kill,
        max_latency_after_kill_ms: ms(max_latency_after_kill_us),
    }
}

/// Finds the PID to kill: the node (by `/status` node id, matched to `pids` in the order of
/// `http`) that leads the most ranges.
pub async fn find_leader_pid(http: &[String], pids: &[u32]) -> Result<u32> {
    if http.is_empty() || http.len() != pids.len() {
        bail!("failover needs --kill-pid PID, or --http and --server-pids for every node, in the same order");
    }
    let mut node_ids = Vec::new();
    let mut leaders = Vec::new();
    for addr in http {
        let status = admin::parse_status(&admin::status(addr).await?)?;
        node_ids.push(status.node_id);
        if leaders.is_empty() {
            leaders = status.leaders;
        }
    }
    let mut counts: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for (_, leader) in &leaders {
        *counts.entry(*leader).or_default() += 1;
    }
    let (leader, _) = counts
        .into_iter()
        .max_by_key(|(id, n)| (*n, std::cmp::Reverse(*id)))
        .context("no range has a leader")?;
    let index = node_ids
        .iter()
        .position(|&id| id == leader)
        .with_context(|| format!("leader node {leader} is not among --http"))?;
    Ok(pids[index])
}

/// What the idle-ranges scenario found, per node (averaged over the nodes measured).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdleSummary {
    pub nodes: usize,
    pub window_s: f64,
    pub replicas_per_node: f64,
    pub quiesced_per_node: f64,
    /// CPU of one node as a percentage of one core.
    pub cpu_percent_per_node: Option<f64>,
    pub rss_mib_per_node: Option<f64>,
    /// RSS over replicas: an upper bound on what one replica costs (includes the base process).
    pub rss_kib_per_replica: Option<f64>,
    /// Peer batches (messages on the wire) per second sent by one node.
    pub peer_messages_per_second_per_node: Option<f64>,
    /// Raft heartbeats carried in those batches, per second per node.
    pub heartbeats_per_second_per_node: Option<f64>,
}

/// Measures idle cost for `window`. `http` (admin endpoints) and `pids` may each be empty.
pub async fn idle_ranges(http: &[String], pids: &[u32], window: Duration) -> Result<IdleSummary> {
    if http.is_empty() && pids.is_empty() {
        bail!("idle-ranges needs --server-pids and/or --http (one per node)");
    }
    const BATCHES: &str = "flotilla_peer_batches_sent_total";
    const HEARTBEATS: &str = "flotilla_raft_heartbeats_sent_total";
    let metrics = || async {
        let mut sums = (0.0, 0.0);
        for addr in http {
            let text = admin::get(addr, "/metrics").await?;
            sums.0 += admin::metric_sum(&text, BATCHES);
            sums.1 += admin::metric_sum(&text, HEARTBEATS);
        }
        anyhow::Ok(sums)
    };
    let before_metrics = metrics().await?;
    let before_cpu = ProcSample::read_all(pids)?;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(window).await;
    let after_metrics = metrics().await?;
    let after_cpu = ProcSample::read_all(pids)?;
    let seconds = started.elapsed().as_secs_f64();

    let mut replicas = 0;
    let mut quiesced = 0;
    for addr in http {
        let status = admin::parse_status(&admin::status(addr).await?)?;
        replicas += status.replicas;
        quiesced += status.quiesced;
    }
    let nodes = if pids.is_empty() { http.len() } else { pids.len() };
    let per_node = |x: f64| x / nodes as f64;
    let ticks = procfs::clock_ticks_per_second() as f64;
    let has_pids = !pids.is_empty();
    let has_http = !http.is_empty();
    let rss_mib = has_pids.then(|| per_node(after_cpu.rss_bytes as f64) / (1 << 20) as f64);
    Ok(IdleSummary {
        nodes,
        window_s: seconds,
        replicas_per_node: per_node(replicas as f64),
        quiesced_per_node: per_node(quiesced as f64),
        cpu_percent_per_node: has_pids.then(|| {
            per_node(
                100.0 * after_cpu.cpu_ticks.saturating_sub(before_cpu.cpu_ticks) as f64 / ticks / seconds,
            )
        }),
        rss_mib_per_node: rss_mib,
        rss_kib_per_replica: rss_mib
            .filter(|_| has_http && replicas > 0)
            .map(|mib| mib * 1024.0 / per_node(replicas as f64)),
        peer_messages_per_second_per_node: has_http
            .then(|| per_node(after_metrics.0 - before_metrics.0) / seconds),
        heartbeats_per_second_per_node: has_http
            .then(|| per_node(after_metrics.1 - before_metrics.1) / seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(done_ms: u64, latency_ms: u64, ok: bool) -> OpRecord {
        OpRecord { done_us: done_ms * 1_000, latency_us: latency_ms * 1_000, ok }
    }

    #[test]
    fn failover_finds_the_hole_and_the_recovery() {
        let mut log = Vec::new();
        // 0–5 s: an op every 10 ms, 2 ms each. Kill at 5 s. Nothing completes until 6.5 s,
        // then ops that waited complete slowly, then normal from 7 s on.
        for t in (10..5_000).step_by(10) {
            log.push(op(t, 2, true));
        }
        log.push(op(5_900, 900, false));
        for t in (6_500..7_000).step_by(10) {
            log.push(op(t, 50, true));
        }
        for t in (7_000..10_000).step_by(10) {
            log.push(op(t, 2, true));
        }
        let summary = analyze_failover(&log, 5_000_000, 10_000_000, 42);
        assert_eq!(summary.killed_pid, 42);
        assert!((summary.baseline_p99_ms - 2.0).abs() < 0.01, "{summary:?}");
        assert!((summary.unavailable_ms - 1_500.0).abs() < 0.01, "{summary:?}");
        // Half the old rate (10 per 100 ms) is back from the 6.5 s bucket on.
        assert_eq!(summary.degraded_ms, Some(1_500.0));
        assert_eq!(summary.errors_after_kill, 1);
        assert!((summary.max_latency_after_kill_ms - 900.0).abs() < 1.0);
        // The slow ops started up to 6,940 ms, the fast ones from 6,998 ms: the first clean
        // window (on the 50 ms grid from the kill) starts at 6,950 ms.
        assert_eq!(summary.back_to_baseline_p99_ms, Some(1_950.0));
    }

    #[test]
    fn failover_without_recovery_says_so() {
        let log = vec![op(100, 1, true), op(9_000, 4_000, true)];
        let summary = analyze_failover(&log, 1_000_000, 10_000_000, 1);
        assert_eq!(summary.back_to_baseline_p99_ms, None);
        assert_eq!(summary.degraded_ms, None);
        assert!((summary.unavailable_ms - 8_000.0).abs() < 0.01);
    }
}
