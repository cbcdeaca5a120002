//! Figures out of a run: the summary (what `--json` writes), the table at the end, the ratios
//! against the first target, and the side-by-side table of several saved reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::run::{RunResult, TIMELINE_BUCKET};
use crate::scenario::{FailoverSummary, IdleSummary};

/// Quantiles the CDF is sampled at (dense in the tail, where the interest is).
const CDF_QUANTILES: &[f64] = &[
    0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.999, 0.9995, 0.9999, 1.0,
];

/// Everything one invocation measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// `--title`, e.g. the comparison this run is part of.
    pub title: Option<String>,
    /// The command line that produced the report.
    pub command: String,
    pub host: Host,
    pub runs: Vec<RunSummary>,
    pub idle: Option<IdleSummary>,
}

/// The machine, so figures are read against it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Host {
    pub cores: usize,
    /// 1-minute load average when the run started: other work on the machine skews figures.
    pub load_average_at_start: Option<f64>,
}

impl Host {
    pub fn probe() -> Host {
        let load_average_at_start = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
        Host { cores: std::thread::available_parallelism().map_or(1, |n| n.get()), load_average_at_start }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One target × workload measurement, as `--json` writes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSummary {
    pub label: String,
    pub url: String,
    pub workload: String,
    pub workload_description: String,
    pub clients: usize,
    /// Offered load (open loop), ops/s; absent for closed loop.
    pub rate: Option<f64>,
    pub value_size: usize,
    pub loaded_keys: u64,
    pub duration_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_second: f64,
    pub latency_us: Percentiles,
    /// "read", "write", "scan".
    pub latency_us_by_kind: BTreeMap<String, Percentiles>,
    /// Server CPU (utime + stime of all `--server-pids`) per successful op, µs.
    pub server_cpu_us_per_op: Option<f64>,
    /// Bytes the server processes wrote to storage per successful op.
    pub server_disk_bytes_per_op: Option<f64>,
    /// This harness's own CPU per op, µs (it shares the machine with the servers).
    pub client_cpu_us_per_op: f64,
    pub timeline_bucket_ms: u64,
    /// Successful ops completed in each bucket of the window.
    pub timeline_ops: Vec<u64>,
    /// (latency µs, fraction of ops at or below it), ascending.
    pub cdf: Vec<(u64, f64)>,
    pub error_samples: Vec<String>,
    pub failover: Option<FailoverSummary>,
}

impl RunSummary {
    pub fn from_result(r: &RunResult, failover: Option<FailoverSummary>) -> RunSummary {
        let per_op = |x: f64| (r.ops > 0).then(|| x / r.ops as f64);
        let cdf = if r.latency.is_empty() {
            Vec::new()
        } else {
            CDF_QUANTILES.iter().map(|&q| (r.latency.value_at_quantile(q), q)).collect()
        };
        RunSummary {
            label: r.label.clone(),
            url: r.url.clone(),
            workload: r.workload.clone(),
            workload_description: r.workload_description.clone(),
            clients: r.clients,
            rate: r.rate,
            value_size: r.value_size,
            loaded_keys: r.loaded_keys,
            duration_s: r.window.as_secs_f64(),
            ops: r.ops,
            errors: r.errors,
            ops_per_second: r.ops_per_second(),
            latency_us: Percentiles::of(&r.latency),
            latency_us_by_kind: r
                .latency_by_kind
                .iter()
                .map(|(kind, h)| (format!("{kind:?}").to_lowercase(), Percentiles::of(h)))
                .collect(),
            server_cpu_us_per_op: r.server.and_then(|s| per_op(s.cpu_us)),
            server_disk_bytes_per_op: r.server.and_then(|s| per_op(s.write_bytes as f64)),
            client_cpu_us_per_op: per_op(r.client_cpu_us).unwrap_or(0.0),
            timeline_bucket_ms: TIMELINE_BUCKET.as_millis() as u64,
            timeline_ops: r.timeline.clone(),
            cdf,
            error_samples: r.error_samples.clone(),
            failover,
        }
    }
}

/// Milliseconds from microseconds, for tables.
fn ms(us: u64) -> String {
    let ms = us as f64 / 1_000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// 12345.6 → "12,346".
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// Left-aligns the first column, right-aligns the rest.
fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate().take(columns) {
            let pad = widths[i] - cell.chars().count();
            if i == 0 {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str("  ");
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
    out
}

/// The table printed at the end of a run: one row per target; ratios against the first.
pub fn runs_table(runs: &[RunSummary]) -> String {
    let header: Vec<String> = [
        "target",
        "workload",
        "clients",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "errors",
        "srv cpu µs/op",
        "srv disk B/op",
        "cli cpu µs/op",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let clients = match r.rate {
                Some(rate) => format!("{} @{}/s", r.clients, thousands(rate)),
                None => r.clients.to_string(),
            };
            vec![
                r.label.clone(),
                r.workload.clone(),
                clients,
                thousands(r.ops_per_second),
                ms(r.latency_us.p50),
                ms(r.latency_us.p99),
                ms(r.latency_us.p999),
                ms(r.latency_us.max),
                r.errors.to_string(),
                opt(r.server_cpu_us_per_op, 1),
                opt(r.server_disk_bytes_per_op, 0),
                format!("{:.1}", r.client_cpu_us_per_op),
            ]
        })
        .collect();
    let mut out = render_table(&header, &rows);
    if runs.len() > 1 {
        let first = &runs[0];
        out.push_str(&format!("\nratios vs {}:\n", first.label));
        let header: Vec<String> =
            ["target", "ops/s ×", "p50 ×", "p99 ×", "cpu/op ×"].map(String::from).to_vec();
        let rows: Vec<Vec<String>> = runs[1..]
            .iter()
            .map(|r| {
                let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".to_string() };
                vec![
                    r.label.clone(),
                    ratio(r.ops_per_second, first.ops_per_second),
                    ratio(r.latency_us.p50 as f64, first.latency_us.p50 as f64),
                    ratio(r.latency_us.p99 as f64, first.latency_us.p99 as f64),
                    match (r.server_cpu_us_per_op, first.server_cpu_us_per_op) {
                        (Some(a), Some(b)) => ratio(a, b),
                        _ => "-".to_string(),
                    },
                ]
            })
            .collect();
        out.push_str(&render_table(&header, &rows));
    }
    for r in runs {
        if !r.error_samples.is_empty() {
            let _ =
                writeln!(out, "\n{} errors ({}), e.g.: {}", r.label, r.errors, r.error_samples.join(" | "));
        }
        if let Some(f) = &r.failover {
            let _ = writeln!(
                out,
                "\nfailover ({}): killed pid {} at {:.1} s; throughput under half its pre-kill rate for {}; \
                 longest stretch without a successful op {:.0} ms; p99 back to the pre-kill {:.2} ms after {}; \
                 {} errors; slowest op {:.0} ms",
                r.label,
                f.killed_pid,
                f.killed_at_ms / 1e3,
                f.degraded_ms.map_or("the rest of the run".to_string(), |t| format!("{t:.0} ms")),
                f.unavailable_ms,
                f.baseline_p99_ms,
                f.back_to_baseline_p99_ms.map_or("never (within the run)".to_string(), |t| format!("{t:.0} ms")),
                f.errors_after_kill,
                f.max_latency_after_kill_ms,
            );
        }
    }
    out
}

/// The idle-ranges table.
pub fn idle_table(idle: &IdleSummary) -> String {
    let header: Vec<String> = [
        "nodes",
        "replicas/node",
        "quiesced/node",
        "cpu % of a core/node",
        "RSS MiB/node",
        "RSS KiB/replica",
        "peer msgs/s/node",
        "heartbeats/s/node",
    ]
    .map(String::from)
    .to_vec();
    let row = vec![
        idle.nodes.to_string(),
        format!("{:.0}", idle.replicas_per_node),
        format!("{:.0}", idle.quiesced_per_node),
        opt(idle.cpu_percent_per_node, 2),
        opt(idle.rss_mib_per_node, 1),
        opt(idle.rss_kib_per_replica, 2),
        opt(idle.peer_messages_per_second_per_node, 1),
        opt(idle.heartbeats_per_second_per_node, 1),
    ];
    render_table(&header, &[row])
}

/// Several saved reports side by side: one row per report (its title), each run's ops/s and
/// p50/p99, and the ratios of the first run to the second (the figure the targets are set on).
pub fn side_by_side(reports: &[Report]) -> String {
    let width = reports.iter().map(|r| r.runs.len()).max().unwrap_or(0);
    let mut header = vec!["comparison".to_string()];
    for i in 0..width {
        let n = i + 1;
        header.extend([
            format!("#{n} target"),
            format!("#{n} ops/s"),
            format!("#{n} p50/p99 ms"),
            format!("#{n} cpu µs/op"),
        ]);
    }
    header.extend(["ops/s #1÷#2".to_string(), "p50 #2÷#1".to_string()]);
    let mut rows = Vec::new();
    for report in reports {
        let mut row = vec![report
            .title
            .clone()
            .unwrap_or_else(|| report.runs.first().map(|r| r.workload.clone()).unwrap_or_default())];
        for i in 0..width {
            match report.runs.get(i) {
                Some(r) => row.extend([
                    r.label.clone(),
                    thousands(r.ops_per_second),
                    format!("{}/{}", ms(r.latency_us.p50), ms(r.latency_us.p99)),
                    opt(r.server_cpu_us_per_op, 0),
                ]),
                None => row.extend(["".to_string(), "".to_string(), "".to_string(), "".to_string()]),
            }
        }
        match (report.runs.first(), report.runs.get(1)) {
            (Some(a), Some(b)) => {
                let ratio = |x: f64, y: f64| if y > 0.0 { format!("{:.2}", x / y) } else { "-".to_string() };
                row.push(ratio(a.ops_per_second, b.ops_per_second));
                row.push(ratio(b.latency_us.p50 as f64, a.latency_us.p50 as f64));
            }
            _ => row.extend(["-".to_string(), "-".to_string()]),
        }
        rows.push(row);
    }
    render_table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::new_histogram;

    pub(crate) fn sample_run(label: &str, ops_per_second: f64, p50: u64) -> RunSummary {
        let mut h = new_histogram();
        for v in [p50 / 2, p50, p50, p50 * 3] {
            h.record(v.max(1)).unwrap();
        }
        RunSummary {
            label: label.to_string(),
            workload: "kv0".into(),
            clients: 4,
            duration_s: 1.0,
            ops: ops_per_second as u64,
            ops_per_second,
            latency_us: Percentiles::of(&h),
            timeline_bucket_ms: 100,
            timeline_ops: vec![1, 5, 3, 8],
            cdf: CDF_QUANTILES.iter().map(|&q| (h.value_at_quantile(q), q)).collect(),
            ..RunSummary::default()
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = new_histogram();
        for v in 1..=1_000u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1_000);
        assert!((p.p50 as i64 - 500).abs() <= 1 && (p.p99 as i64 - 990).abs() <= 1, "{p:?}");
        assert_eq!(p.max, 1_000);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn json_round_trips_the_same_figures() {
        let report =
            Report { title: Some("t".into()), runs: vec![sample_run("a", 1234.0, 800)], ..Report::default() };
        let json = serde_json::to_string_pretty(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.runs[0].ops_per_second, 1234.0);
        assert_eq!(back.runs[0].latency_us, report.runs[0].latency_us);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["runs"][0]["latency_us"]["p50"], 800);
    }

    #[test]
    fn tables_show_ratios_against_the_first_target() {
        let runs = vec![sample_run("flotilla", 3000.0, 1000), sample_run("etcd", 1000.0, 2000)];
        let table = runs_table(&runs);
        assert!(table.contains("3,000") && table.contains("1,000"), "{table}");
        let ratios = table.split("ratios vs flotilla").nth(1).expect("ratios section");
        assert!(ratios.contains("0.33") && ratios.contains("2.00"), "{table}");
        let report = Report { title: Some("kv0 256".into()), runs, ..Report::default() };
        let side = side_by_side(&[report]);
        assert!(side.contains("kv0 256") && side.contains("3.00") && side.contains("2.00"), "{side}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
