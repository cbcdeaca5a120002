//! The harness: load, warm up, then measure one workload against one target.
//!
//! Closed loop (`rate: None`): each of `clients` tasks issues its next op as soon as the last one
//! returns; latency is from the op's start to its reply.
//!
//! Open loop (`rate: Some(r)`): op number k is *due* at `t0 + k/r`, whatever happened to earlier
//! ops; `clients` workers take the next due op in turn, wait for its time and run it. Latency is
//! measured from the due time, not from when a worker got round to it, so a stall shows up as
//! the queueing delay every op behind it suffered (no coordinated omission). The one exception
//! is the timer's own lateness: a worker that was idle and woke up to [`TIMER_SLACK`] after the
//! due time (tokio timers have 1 ms granularity) counts from when it actually sent the op.
//!
//! Only ops *due or started* inside the measurement window count, and all of them are waited for
//! (up to `op_timeout`), so throughput is ops in the window over the window's length.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use flotilla_engine::rng::Rng;

use crate::dist::key;
use crate::procfs::ProcSample;
use crate::target::{Connection, Target, TargetSpec};
use crate::workload::{Op, OpKind, Workload};

/// Latencies are recorded in microseconds, from 1 µs to this.
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// Width of one throughput-over-time bucket.
pub const TIMELINE_BUCKET: Duration = Duration::from_millis(100);
/// Error messages kept per run, to show what went wrong without flooding the report.
const ERROR_SAMPLES_MAX: usize = 8;
/// Pause after a failed op in closed loop, so a dead server is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Open loop: how late a sleeping worker's timer may fire and still count as on time.
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// Attempts per key while preloading.
const LOAD_ATTEMPTS: usize = 5;

/// How to run one measurement.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub clients: usize,
    /// Offered load in ops/s (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub value_size: usize,
    /// Write the workload's keys before warming up.
    pub load: bool,
    pub progress: bool,
    pub seed: u64,
    pub op_timeout: Duration,
    /// Server processes whose CPU and disk writes are divided by the ops done.
    pub server_pids: Vec<u32>,
    /// Kill this process this long into the measurement (the failover scenario).
    pub kill: Option<(u32, Duration)>,
}

/// One op as the failover analysis needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// Completion time, µs after the measurement started.
    pub done_us: u64,
    pub latency_us: u64,
    pub ok: bool,
}

/// Server-side cost over the measurement window, summed over the given PIDs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerUsage {
    pub cpu_us: f64,
    pub write_bytes: u64,
}

/// What one measurement found.
#[derive(Debug)]
pub struct RunResult {
    pub label: String,
    pub url: String,
    pub workload: String,
    pub workload_description: String,
    pub clients: usize,
    pub rate: Option<f64>,
    pub value_size: usize,
    pub window: Duration,
    pub ops: u64,
    pub errors: u64,
    /// All successful ops, µs.
    pub latency: Histogram<u64>,
    /// Per op kind (read, write, scan), µs.
    pub latency_by_kind: Vec<(OpKind, Histogram<u64>)>,
    /// Successful ops completed in each [`TIMELINE_BUCKET`] of the window.
    pub timeline: Vec<u64>,
    pub server: Option<ServerUsage>,
    /// This process's CPU over the window (the client side shares the machine).
    pub client_cpu_us: f64,
    pub error_samples: Vec<String>,
    /// Every op in the window, for the failover scenario only.
    pub op_log: Vec<OpRecord>,
    /// When the kill happened, µs after the window started.
    pub killed_at_us: Option<u64>,
    pub loaded_keys: u64,
}

impl RunResult {
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Counters the progress bar reads while clients run.
#[derive(Debug, Default)]
struct Live {
    done: AtomicU64,
    errors: AtomicU64,
    /// Open loop: the next op number to take.
    ticket: AtomicU64,
}

/// The schedule every client follows.
#[derive(Debug)]
struct Plan {
    start: Instant,
    measure_start: Instant,
    end: Instant,
    rate: Option<f64>,
    op_timeout: Duration,
    value_size: usize,
    record_ops: bool,
}

/// What one client found.
struct ClientOutcome {
    latency: Histogram<u64>,
    by_kind: [Histogram<u64>; 3],
    timeline: Vec<u64>,
    ops: u64,
    errors: u64,
    error_samples: Vec<String>,
    op_log: Vec<OpRecord>,
}

fn kind_slot(kind: OpKind) -> usize {
    match kind {
        OpKind::Read => 0,
        OpKind::Write => 1,
        OpKind::Scan => 2,
    }
}

const KINDS: [OpKind; 3] = [OpKind::Read, OpKind::Write, OpKind::Scan];

/// Random printable bytes to cut values from (a window at a random offset per op).
fn value_pool(rng: &mut Rng, value_size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..value_size + 4096).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]).collect()
}

fn pick_value<'a>(pool: &'a [u8], rng: &mut Rng, value_size: usize) -> &'a [u8] {
    let offset = rng.below((pool.len() - value_size + 1) as u64) as usize;
    &pool[offset..offset + value_size]
}

/// Runs one op; a read-modify-write is a read then a write of the same key.
async fn execute<C: Connection>(conn: &mut C, op: Op, value: &[u8]) -> Result<()> {
    match op {
        Op::Read { key: k } => conn.get(&key(k)).await.map(drop),
        Op::Update { key: k } | Op::Insert { key: k } => conn.put(&key(k), value).await,
        Op::Scan { start, limit } => conn.scan(&key(start), limit).await.map(drop),
        Op::ReadModifyWrite { key: k } => {
            let k = key(k);
            conn.get(&k).await?;
            conn.put(&k, value).await
        }
    }
}

fn progress_bar(enabled: bool, length: u64, template: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr_with_hz(5));
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar
}

/// Loads, warms up and measures `workload` on `target`.
pub async fn run<T: Target>(
    target: Arc<T>,
    spec: &TargetSpec,
    workload: Arc<dyn Workload>,
    opts: &RunOptions,
) -> Result<RunResult> {
    assert!(opts.clients >= 1, "at least one client");
    for kind in workload.kinds() {
        if !target.supports(kind) {
            bail!("{}: target {} does not support {kind:?} ops", workload.name(), spec.label);
        }
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of ops per second");
    }

    let mut conns = Vec::with_capacity(opts.clients);
    {
        let mut connecting = tokio::task::JoinSet::new();
        for client in 0..opts.clients {
            let target = target.clone();
            connecting.spawn(async move { (client, target.connect(client).await) });
        }
        let mut slots: Vec<Option<T::Conn>> = (0..opts.clients).map(|_| None).collect();
        while let Some(joined) = connecting.join_next().await {
            let (client, conn) = joined.context("connect task")?;
            slots[client] = Some(conn.with_context(|| format!("connecting to {}", spec.label))?);
        }
        conns.extend(slots.into_iter().map(|c| c.expect("every client connected")));
    }

    let loaded_keys = if opts.load { workload.preload_keys() } else { 0 };
    if loaded_keys > 0 {
        conns = load(conns, loaded_keys, opts, &spec.label).await?;
    }

    let start = Instant::now();
    let plan = Arc::new(Plan {
        start,
        measure_start: start + opts.warmup,
        end: start + opts.warmup + opts.duration,
        rate: opts.rate,
        op_timeout: opts.op_timeout,
        value_size: opts.value_size,
        record_ops: opts.kill.is_some(),
    });
    let live = Arc::new(Live::default());
    let mut clients = tokio::task::JoinSet::new();
    for (index, conn) in conns.into_iter().enumerate() {
        let seed = opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(index as u64 + 1);
        let generator = workload.clone().generator(seed);
        clients.spawn(client(conn, generator, Rng::new(seed ^ 0xa5a5), plan.clone(), live.clone()));
    }

    // The controller: progress, /proc snapshots at the window's edges, the failover kill.
    let total_ms = (opts.warmup + opts.duration).as_millis() as u64;
    let bar = progress_bar(opts.progress, total_ms, "{prefix} [{bar:30}] {elapsed:>3}/{duration:3} {msg}");
    bar.set_prefix(format!("{} {}", workload.name(), spec.label));
    let mut server_before = None;
    let mut client_before = None;
    let mut killed_at_us = None;
    let kill_at = opts.kill.map(|(pid, after)| (pid, plan.measure_start + after));
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let now = Instant::now();
        if server_before.is_none() && now >= plan.measure_start {
            server_before = Some(ProcSample::read_all(&opts.server_pids).context("reading server /proc")?);
            client_before = Some(ProcSample::read(0)?);
        }
        if let Some((pid, at)) = kill_at {
            if killed_at_us.is_none() && now >= at {
                signal(pid, "KILL")?;
                killed_at_us = Some(now.duration_since(plan.measure_start).as_micros() as u64);
                bar.println(format!("killed pid {pid}"));
            }
        }
        let done = live.done.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, done);
        let phase = if now < plan.measure_start { "warmup" } else { "measure" };
        bar.set_position(now.duration_since(start).as_millis().min(total_ms as u128) as u64);
        bar.set_message(format!("{phase} {rate:>9.0} ops/s  errors {}", live.errors.load(Ordering::Relaxed)));
        if now >= plan.end {
            break;
        }
    }
    // Server usage is read at the window's end; ops still in flight finish after it.
    let server_after = ProcSample::read_all(&opts.server_pids).ok();
    let client_after = ProcSample::read(0)?;
    bar.set_message("waiting for ops in flight");
    let mut outcomes = Vec::with_capacity(opts.clients);
    while let Some(joined) = clients.join_next().await {
        outcomes.push(joined.context("client task")?);
    }
    bar.finish_and_clear();

    let mut latency = new_histogram();
    let mut by_kind = [new_histogram(), new_histogram(), new_histogram()];
    let buckets = opts.duration.as_micros().div_ceil(TIMELINE_BUCKET.as_micros()) as usize;
    let mut timeline = vec![0u64; buckets];
    let (mut ops, mut errors) = (0, 0);
    let mut error_samples = Vec::new();
    let mut op_log = Vec::new();
    for outcome in outcomes {
        latency.add(&outcome.latency).expect("same bounds");
        for (sum, part) in by_kind.iter_mut().zip(&outcome.by_kind) {
            sum.add(part).expect("same bounds");
        }
        for (sum, part) in timeline.iter_mut().zip(&outcome.timeline) {
            *sum += part;
        }
        ops += outcome.ops;
        errors += outcome.errors;
        for sample in outcome.error_samples {
            if error_samples.len() < ERROR_SAMPLES_MAX && !error_samples.contains(&sample) {
                error_samples.push(sample);
            }
        }
        op_log.extend(outcome.op_log);
    }
    op_log.sort_by_key(|r| r.done_us);
    let ticks_per_second = crate::procfs::clock_ticks_per_second() as f64;
    let cpu_us = |before: ProcSample, after: ProcSample| {
        after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 * 1e6 / ticks_per_second
    };
    let server = match (opts.server_pids.is_empty(), server_before, server_after) {
        (false, Some(before), Some(after)) => Some(ServerUsage {
            cpu_us: cpu_us(before, after),
            write_bytes: after.write_bytes.saturating_sub(before.write_bytes),
        }),
        _ => None,
    };
    Ok(RunResult {
        label: spec.label.clone(),
        url: spec.url.clone(),
        workload: workload.name().to_string(),
        workload_description: workload.describe(),
        clients: opts.clients,
        rate: opts.rate,
        value_size: opts.value_size,
        window: opts.duration,
        ops,
        errors,
        latency,
        latency_by_kind: KINDS.into_iter().zip(by_kind).filter(|(_, h)| !h.is_empty()).collect(),
        timeline,
        server,
        client_cpu_us: client_before.map_or(0.0, |before| cpu_us(before, client_after)),
        error_samples,
        op_log,
        killed_at_us,
        loaded_keys,
    })
}

/// Sends signal `name` (`KILL`, `STOP`, `CONT`) with the `kill` command (this crate forbids
/// `unsafe`, so no libc call).
pub(crate) fn signal(pid: u32, name: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

async fn client<C: Connection>(
    mut conn: C,
    mut generator: Box<dyn crate::workload::OpGenerator>,
    mut rng: Rng,
    plan: Arc<Plan>,
    live: Arc<Live>,
) -> ClientOutcome {
    let pool = value_pool(&mut rng, plan.value_size);
    let buckets = (plan.end - plan.measure_start).as_micros().div_ceil(TIMELINE_BUCKET.as_micros()) as usize;
    let mut out = ClientOutcome {
        latency: new_histogram(),
        by_kind: [new_histogram(), new_histogram(), new_histogram()],
        timeline: vec![0; buckets],
        ops: 0,
        errors: 0,
        error_samples: Vec::new(),
        op_log: Vec::new(),
    };
    loop {
        let op = generator.next_op();
        let started = match plan.rate {
            None => {
                let now = Instant::now();
                if now >= plan.end {
                    break;
                }
                now
            }
            Some(rate) => {
                let k = live.ticket.fetch_add(1, Ordering::Relaxed);
                let due = plan.start + Duration::from_secs_f64(k as f64 / rate);
                if due >= plan.end {
                    break;
                }
                if Instant::now() >= due {
                    // Behind schedule: the op waited in the queue; that wait is latency.
                    due
                } else {
                    // Idle until due: tokio's timer wakes up to ~1 ms late, which is the
                    // harness's granularity, not the system's queueing; within that slack the
                    // op starts when it is actually sent.
                    tokio::time::sleep_until(due).await;
                    let woke = Instant::now();
                    if woke.duration_since(due) <= TIMER_SLACK {
                        woke
                    } else {
                        due
                    }
                }
            }
        };
        let value = pick_value(&pool, &mut rng, plan.value_size);
        let result = match tokio::time::timeout(plan.op_timeout, execute(&mut conn, op, value)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("timed out after {:?}", plan.op_timeout)),
        };
        let done = Instant::now();
        let measured = started >= plan.measure_start;
        let latency_us = done.duration_since(started).as_micros() as u64;
        let ok = result.is_ok();
        if measured {
            if plan.record_ops {
                let done_us = done.duration_since(plan.measure_start).as_micros() as u64;
                out.op_log.push(OpRecord { done_us, latency_us, ok });
            }
            match &result {
                Ok(()) => {
                    out.ops += 1;
                    out.latency.saturating_record(latency_us.max(1));
                    out.by_kind[kind_slot(op.kind())].saturating_record(latency_us.max(1));
                    let bucket = (done.duration_since(plan.measure_start).as_micros()
                        / TIMELINE_BUCKET.as_micros()) as usize;
                    // Ops started in the window but done just after it count in its last bucket.
                    let bucket = bucket.min(out.timeline.len().saturating_sub(1));
                    if let Some(slot) = out.timeline.get_mut(bucket) {
                        *slot += 1;
                    }
                    live.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    out.errors += 1;
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    let text = format!("{e:#}");
                    if out.error_samples.len() < ERROR_SAMPLES_MAX && !out.error_samples.contains(&text) {
                        out.error_samples.push(text);
                    }
                }
            }
        } else if ok {
            live.done.fetch_add(1, Ordering::Relaxed);
        }
        if !ok && plan.rate.is_none() {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    out
}

/// Writes keys `0..count` with every connection, then hands the connections back.
async fn load<C: Connection>(conns: Vec<C>, count: u64, opts: &RunOptions, label: &str) -> Result<Vec<C>> {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let bar = progress_bar(opts.progress, count, "load {prefix} [{bar:30}] {pos}/{len} keys {per_sec}");
    bar.set_prefix(label.to_string());
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut conn) in conns.into_iter().enumerate() {
        let (next, failures, bar) = (next.clone(), failures.clone(), bar.clone());
        let (value_size, op_timeout) = (opts.value_size, opts.op_timeout);
        let mut rng = Rng::new(opts.seed ^ (index as u64) << 20 ^ 0x10ad);
        tasks.spawn(async move {
            let pool = value_pool(&mut rng, value_size);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let mut attempt = 0;
                loop {
                    let value = pick_value(&pool, &mut rng, value_size);
                    match tokio::time::timeout(op_timeout, conn.put(&key(i), value)).await {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) if attempt + 1 < LOAD_ATTEMPTS => drop(e),
                        Err(_) if attempt + 1 < LOAD_ATTEMPTS => {}
                        outcome => {
                            let reason = match outcome {
                                Ok(Err(e)) => format!("{e:#}"),
                                _ => "timed out".to_string(),
                            };
                            failures.lock().expect("not poisoned").push(format!("key {i}: {reason}"));
                            break;
                        }
                    }
                    attempt += 1;
                    tokio::time::sleep(ERROR_BACKOFF * attempt as u32).await;
                }
                bar.inc(1);
            }
            (index, conn)
        });
    }
    let mut slots: Vec<Option<C>> = Vec::new();
    slots.resize_with(tasks.len(), || None);
    while let Some(joined) = tasks.join_next().await {
        let (index, conn) = joined.context("load task")?;
        slots[index] = Some(conn);
    }
    bar.finish_and_clear();
    let failures = failures.lock().expect("not poisoned");
    if !failures.is_empty() {
        bail!("loading {count} keys into {label}: {} failed, first: {}", failures.len(), failures[0]);
    }
    Ok(slots.into_iter().map(|c| c.expect("every loader returned its connection")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Scheme;
    use crate::workload::MixWorkload;
    use std::future::Future;
    use std::sync::atomic::AtomicBool;

    /// A target that answers at once, except one op issued after `stall_after` into the run
    /// takes `stall` (once).
    struct StallTarget {
        started: Instant,
        stall_after: Duration,
        stall: Duration,
        stalled: Arc<AtomicBool>,
    }

    struct StallConnection {
        started: Instant,
        stall_after: Duration,
        stall: Duration,
        stalled: Arc<AtomicBool>,
    }

    impl Target for StallTarget {
        type Conn = StallConnection;
        fn supports(&self, _kind: OpKind) -> bool {
            true
        }
        fn connect(&self, _client: usize) -> impl Future<Output = Result<StallConnection>> + Send {
            let conn = StallConnection {
                started: self.started,
                stall_after: self.stall_after,
                stall: self.stall,
                stalled: self.stalled.clone(),
            };
            async move { Ok(conn) }
        }
    }

    impl StallConnection {
        async fn answer(&self) {
            if self.started.elapsed() >= self.stall_after && !self.stalled.swap(true, Ordering::Relaxed) {
                tokio::time::sleep(self.stall).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    impl Connection for StallConnection {
        async fn get(&mut self, _key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.answer().await;
            Ok(None)
        }
        async fn put(&mut self, _key: &[u8], _value: &[u8]) -> Result<()> {
            self.answer().await;
            Ok(())
        }
        async fn scan(&mut self, _start: &[u8], _limit: usize) -> Result<usize> {
            self.answer().await;
            Ok(0)
        }
    }

    /// Runs kv0 for 600 ms on one client/worker with a 200 ms stall 200 ms in.
    async fn stalled_run(rate: Option<f64>) -> RunResult {
        let target = Arc::new(StallTarget {
            started: Instant::now(),
            stall_after: Duration::from_millis(200),
            stall: Duration::from_millis(200),
            stalled: Arc::new(AtomicBool::new(false)),
        });
        let spec =
            TargetSpec { label: "stall".into(), url: "mem://".into(), scheme: Scheme::Resp, addrs: vec![] };
        let workload: Arc<dyn Workload> = Arc::new(MixWorkload::named("kv0", 100, None, 1).unwrap());
        let opts = RunOptions {
            clients: 1,
            rate,
            duration: Duration::from_millis(600),
            warmup: Duration::ZERO,
            value_size: 16,
            load: false,
            progress: false,
            seed: 1,
            op_timeout: Duration::from_secs(5),
            server_pids: Vec::new(),
            kill: None,
        };
        run(target, &spec, workload, &opts).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_charges_a_stall_to_every_op_queued_behind_it() {
        // 1,000 ops/s offered: ~200 ops fall due during the stall and wait behind it.
        let open = stalled_run(Some(1_000.0)).await;
        let slow = open.latency.count_between(50_000, LATENCY_US_MAX);
        assert!(slow >= 100, "open loop: only {slow} ops over 50 ms of {}", open.ops);
        assert!((500..=650).contains(&open.ops), "open loop did {} ops at 1,000/s for 0.6 s", open.ops);
        // Closed loop hides it: one slow op, everything else instant (coordinated omission).
        let closed = stalled_run(None).await;
        assert_eq!(closed.latency.count_between(50_000, LATENCY_US_MAX), 1);
        assert!(closed.ops > open.ops, "closed loop runs flat out");
        assert_eq!(closed.timeline.iter().sum::<u64>(), closed.ops);
        assert_eq!(closed.errors, 0);
    }
}
