//! What one invocation does: measure each target in turn (or the idle cost, or summarize saved
//! reports), then print the table and write `--json` and `--svg`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::{parse_pids, Args};
use crate::dist::Distribution;
use crate::report::{idle_table, runs_table, side_by_side, Host, Report, RunSummary};
use crate::run::{run, signal, RunOptions, RunResult};
use crate::scenario::{analyze_failover, find_leader_pid, idle_ranges};
use crate::target::flotilla::FlotillaTarget;
use crate::target::resp::RespTarget;
use crate::target::{parse_targets, Scheme, TargetSpec};
use crate::workload::{Mix, MixWorkload, Workload};

pub async fn main(args: Args) -> Result<()> {
    if !args.summarize.is_empty() {
        return summarize(&args);
    }
    let mut report = Report {
        title: args.title.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        host: Host::probe(),
        runs: Vec::new(),
        idle: None,
    };
    if args.workload == "idle-ranges" {
        let pids: Vec<u32> =
            args.server_pids.iter().map(|list| parse_pids(list)).collect::<Result<Vec<_>>>()?.concat();
        eprintln!(
            "idle-ranges: measuring {} node(s) for {:?} ...",
            pids.len().max(args.http.len()),
            args.duration
        );
        let idle = idle_ranges(&args.http, &pids, args.duration).await?;
        println!("{}", idle_table(&idle));
        report.idle = Some(idle);
        return write_outputs(&args, &report);
    }

    let specs = parse_targets(&args.target_lists())?;
    let failover = args.workload == "failover";
    let _bystanders = Paused::stop(&parse_pids(args.pause_pids.as_deref().unwrap_or(""))?)?;
    for (index, spec) in specs.iter().enumerate() {
        // A fresh workload per target: inserts count from the preloaded keys again.
        let workload: Arc<dyn Workload> = if failover {
            let mix = Mix { update: 1.0, ..Mix::default() };
            Arc::new(MixWorkload::new(
                "failover",
                mix,
                args.distribution.unwrap_or(Distribution::Uniform),
                args.keys,
                args.scan_length_max,
            ))
        } else {
            Arc::new(
                MixWorkload::named(&args.workload, args.keys, args.distribution, args.scan_length_max)
                    .map_err(anyhow::Error::msg)?,
            )
        };
        let server_pids = args.pids_for(index, specs.len())?;
        let kill = if failover {
            let pid = match args.kill_pid {
                Some(pid) => pid,
                None => {
                    find_leader_pid(&args.http, &server_pids).await.context("finding the leader to kill")?
                }
            };
            Some((pid, args.kill_after.unwrap_or(args.duration / 3)))
        } else {
            None
        };
        let opts = RunOptions {
            clients: args.clients.max(1),
            rate: args.rate,
            duration: args.duration,
            warmup: args.warmup,
            value_size: args.value_size,
            load: !args.no_load,
            progress: !args.no_progress,
            seed: args.seed,
            op_timeout: args.op_timeout,
            server_pids,
            kill,
        };
        eprintln!(
            "[{}/{}] {} on {}: {}, {} clients{}, {:?} after {:?} warmup",
            index + 1,
            specs.len(),
            workload.name(),
            spec.label,
            workload.describe(),
            opts.clients,
            opts.rate.map_or(String::new(), |r| format!(" at {r} ops/s offered")),
            opts.duration,
            opts.warmup,
        );
        let others: Vec<u32> = if args.pause_others {
            let lists = (0..specs.len()).filter(|&j| j != index).map(|j| args.pids_for(j, specs.len()));
            lists.collect::<Result<Vec<_>>>()?.concat()
        } else {
            Vec::new()
        };
        let paused = Paused::stop(&others)?;
        let result = run_target(spec, workload, &opts, &args)
            .await
            .with_context(|| format!("measuring {}", spec.label))?;
        drop(paused);
        let failover_summary = match (result.killed_at_us, opts.kill) {
            (Some(at), Some((pid, _))) => {
                Some(analyze_failover(&result.op_log, at, opts.duration.as_micros() as u64, pid))
            }
            _ => None,
        };
        let summary = RunSummary::from_result(&result, failover_summary);
        eprintln!(
            "    {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            summary.ops_per_second,
            summary.latency_us.p50 as f64 / 1e3,
            summary.latency_us.p99 as f64 / 1e3,
            summary.errors
        );
        report.runs.push(summary);
    }
    if let Some(title) = &report.title {
        println!("{title}");
    }
    println!("{}", runs_table(&report.runs));
    write_outputs(&args, &report)
}

async fn run_target(
    spec: &TargetSpec,
    workload: Arc<dyn Workload>,
    opts: &RunOptions,
    args: &Args,
) -> Result<RunResult> {
    match spec.scheme {
        Scheme::Resp => run(Arc::new(RespTarget::new(spec.addrs.clone())), spec, workload, opts).await,
        Scheme::Etcd => {
            #[cfg(feature = "etcd")]
            {
                let target = crate::target::etcd::EtcdTarget::connect(&spec.addrs, args.conns).await?;
                run(Arc::new(target), spec, workload, opts).await
            }
            #[cfg(not(feature = "etcd"))]
            {
                bail!(
                    "etcd:// needs flotilla-bench built with the `etcd` feature (it needs protoc): \
                     cargo build --release -p flotilla-bench --features etcd"
                )
            }
        }
        Scheme::Flotilla => {
            let target =
                FlotillaTarget::connect(&spec.addrs, args.conns, args.certs_dir.clone(), opts.op_timeout)
                    .await?;
            run(Arc::new(target), spec, workload, opts).await
        }
    }
}

fn write_outputs(args: &Args, report: &Report) -> Result<()> {
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        if report.runs.is_empty() {
            bail!("--svg: nothing to plot (idle-ranges has no throughput or latency)");
        }
        let title = report.title.clone().unwrap_or_else(|| default_title(&report.runs));
        let svg = crate::svg::render(&[(title, report.runs.iter().collect())]);
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn default_title(runs: &[RunSummary]) -> String {
    runs.first().map_or_else(String::new, |r| {
        format!("{}, {} clients, {}-byte values", r.workload, r.clients, r.value_size)
    })
}

fn summarize(args: &Args) -> Result<()> {
    let mut reports = Vec::new();
    for path in &args.summarize {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        reports.push(report);
    }
    if let Some(title) = &args.title {
        println!("{title}");
    }
    println!("{}", side_by_side(&reports));
    if let Some(path) = &args.svg {
        let groups: Vec<(String, Vec<&RunSummary>)> = reports
            .iter()
            .filter(|r| !r.runs.is_empty())
            .map(|r| (r.title.clone().unwrap_or_else(|| default_title(&r.runs)), r.runs.iter().collect()))
            .collect();
        std::fs::write(path, crate::svg::render(&groups))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Processes stopped with SIGSTOP, resumed (SIGCONT) when this is dropped — on every way out,
/// errors included.
struct Paused(Vec<u32>);

impl Paused {
    fn stop(pids: &[u32]) -> Result<Paused> {
        let paused = Paused(pids.to_vec());
        for &pid in pids {
            signal(pid, "STOP")?;
        }
        Ok(paused)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Err(e) = signal(pid, "CONT") {
                eprintln!("could not resume process {pid}: {e:#}");
            }
        }
    }
}
