//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

use crate::dist::Distribution;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "flotilla-bench",
    version,
    about = "Throughput and latency of Flotilla, etcd and Redis, measured the same way",
    after_help = "Workloads: a b c d e f (YCSB), kv0 (100% writes), kv95, read (100% reads), scan, \
                  failover (kv0 while a leader is killed), idle-ranges (no load; needs --server-pids/--http).\n\
                  Targets: flotilla://HOST:PORT[,..]  resp://HOST:PORT[,..]  etcd://HOST:PORT[,..] \
                  (any may be prefixed LABEL=).\n\
                  Example: flotilla-bench --compare flotilla://127.0.0.1:7000,etcd://127.0.0.1:2379 \
                  --workload kv0 --clients 256 --json out.json --svg out.svg"
)]
pub struct Args {
    /// A target URL; repeat to measure several in turn.
    #[arg(long = "target", short = 't', value_name = "URL")]
    pub targets: Vec<String>,
    /// Targets to measure in turn, comma-separated; ratios are printed against the first.
    #[arg(long, value_name = "URL,URL,...")]
    pub compare: Option<String>,
    /// a, b, c, d, e, f, kv0, kv95, read, scan, failover or idle-ranges.
    #[arg(long, short = 'w', default_value = "a")]
    pub workload: String,
    /// Concurrent clients (closed loop), or workers serving the offered load (with --rate).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub clients: usize,
    /// Open loop: offer this many ops/s whatever the latency; latency counts from each op's
    /// intended start.
    #[arg(long, value_name = "OPS_PER_SECOND")]
    pub rate: Option<f64>,
    /// Length of the measurement (10s, 500ms, 2m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load run before measuring, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Keys in the keyspace (written before measuring when the workload reads).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// uniform, zipfian or latest (default: the workload's own).
    #[arg(long)]
    pub distribution: Option<Distribution>,
    /// Longest scan (YCSB E draws 1..=this).
    #[arg(long, default_value_t = 100)]
    pub scan_length_max: usize,
    /// Do not write the keyspace before measuring (it is already there).
    #[arg(long)]
    pub no_load: bool,
    /// Server PIDs, comma-separated, whose CPU and disk writes are divided by ops done. Give it
    /// once per target, in target order.
    #[arg(long, value_name = "PID,PID,...")]
    pub server_pids: Vec<String>,
    /// With --compare: stop (SIGSTOP) every other target's --server-pids while a target is
    /// measured, and resume them after, so that an idle system beside it takes no CPU from it.
    #[arg(long)]
    pub pause_others: bool,
    /// Processes to keep stopped (SIGSTOP) for the whole run and resume at the end: servers on
    /// the same machine that take no part in it.
    #[arg(long, value_name = "PID,PID,...")]
    pub pause_pids: Option<String>,
    /// Flotilla admin HTTP addresses (HOST:PORT, comma-separated, same order as --server-pids),
    /// for failover (finding the leader) and idle-ranges.
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub http: Vec<String>,
    /// failover: kill this PID instead of the node that leads the most ranges.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// failover: when to kill, into the measurement (default: a third of --duration).
    #[arg(long, value_parser = parse_duration)]
    pub kill_after: Option<Duration>,
    /// Connections shared by the clients of a multiplexed target (etcd gRPC channels,
    /// flotilla:// native clients); resp:// always opens one connection per client.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// flotilla://: mutual TLS with this certificate directory (ca.pem, node.pem, node.key)
    /// instead of an `--insecure` cluster.
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// An op slower than this counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG report: throughput over time and latency CDF per target.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// A title for the report (tables, JSON, SVG).
    #[arg(long)]
    pub title: Option<String>,
    /// No progress bar (CI, logs).
    #[arg(long)]
    pub no_progress: bool,
    /// Run nothing: print saved --json reports side by side (and --svg them together).
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["targets", "compare"])]
    pub summarize: Vec<PathBuf>,
}

impl Args {
    /// All targets, `--target`s first then `--compare`'s, unparsed.
    pub fn target_lists(&self) -> Vec<String> {
        self.targets.iter().cloned().chain(self.compare.clone()).collect()
    }

    /// `--server-pids` for target `index` of `count`.
    pub fn pids_for(&self, index: usize, count: usize) -> Result<Vec<u32>> {
        if self.server_pids.is_empty() {
            return Ok(Vec::new());
        }
        if self.server_pids.len() != count {
            bail!(
                "--server-pids given {} times for {count} targets: give it once per target",
                self.server_pids.len()
            );
        }
        parse_pids(&self.server_pids[index])
    }
}

pub fn parse_pids(list: &str) -> Result<Vec<u32>> {
    list.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<u32>().map_err(|_| anyhow::anyhow!("--server-pids: {p:?} is not a PID")))
        .collect()
}

/// `10s`, `500ms`, `2m`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn acceptance_command_line_parses() {
        let args = Args::try_parse_from([
            "flotilla-bench",
            "--target",
            "flotilla://127.0.0.1:7000",
            "--workload",
            "a",
            "--duration",
            "10s",
        ])
        .unwrap();
        assert_eq!(args.workload, "a");
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.value_size, 256);
        assert_eq!(args.target_lists(), vec!["flotilla://127.0.0.1:7000"]);
    }

    #[test]
    fn compare_pids_and_options_parse() {
        let args = Args::try_parse_from([
            "flotilla-bench",
            "--compare",
            "resp://127.0.0.1:1,etcd://127.0.0.1:2",
            "--server-pids",
            "10,11,12",
            "--server-pids",
            "20",
            "--distribution",
            "latest",
            "--rate",
            "5000",
            "--http",
            "127.0.0.1:8080,127.0.0.2:8080",
            "--no-progress",
        ])
        .unwrap();
        assert_eq!(args.pids_for(0, 2).unwrap(), vec![10, 11, 12]);
        assert_eq!(args.pids_for(1, 2).unwrap(), vec![20]);
        assert!(args.pids_for(0, 3).is_err());
        assert_eq!(args.distribution, Some(Distribution::Latest));
        assert_eq!(args.rate, Some(5000.0));
        assert_eq!(args.http.len(), 2);
        assert!(args.no_progress);
        assert!(Args::try_parse_from(["flotilla-bench", "--distribution", "gauss"]).is_err());
        assert!(Args::try_parse_from(["flotilla-bench", "--summarize", "a.json", "--target", "resp://h:1"])
            .is_err());
    }
}
