//! The nemesis suite's machinery: a [`Run`] starts a cluster of real processes and the
//! workload, lets a scenario inject faults (marking the fault window), then heals everything
//! and checks: every replica converged (same applied index and data hash per range), at most
//! one leader per term per range (from the nodes' logs), every acknowledged set element present
//! and no failed one, and the register history linearizable. A report is printed and written
//! to `target/nemesis/<scenario>.txt` (`target/nemesis/soak/` in a soak); any violation fails
//! the test.

#![allow(dead_code)]

pub mod netns;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::checker;
use crate::harness::{http_get, Cluster};
use workload::{Action, Outcome, Record, Workload, WorkloadConfig};

/// `FLOTILLA_SOAK=1` runs every scenario this many times longer.
const SOAK_FACTOR: u32 = 8;

pub fn soak() -> bool {
    std::env::var("FLOTILLA_SOAK").is_ok_and(|v| v == "1")
}

/// The fault phase's length: `ci` in CI, `SOAK_FACTOR` times that in a soak.
pub fn phase(ci: Duration) -> Duration {
    if soak() {
        ci * SOAK_FACTOR
    } else {
        ci
    }
}

/// Rounds 1, 2, … of a scenario's fault loop, for as long as its fault phase lasts (`phase`):
/// each round starts only while time is left.
pub fn rounds(ci: Duration) -> impl Iterator<Item = usize> {
    let end = Instant::now() + phase(ci);
    (1..).take_while(move |_| Instant::now() < end)
}

pub struct Setup<'a> {
    pub nodes: usize,
    pub ranges: u32,
    pub args: &'a [&'a str],
    pub env: &'a [(Option<usize>, &'a str, &'a str)],
    pub workload: WorkloadConfig,
    /// Start the faults this soon after the processes start (no waiting for leaders).
    pub early: bool,
    /// Runs after the directories exist and before any process starts (mounts, say).
    pub before_start: Option<fn(&Cluster)>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            nodes: 3,
            ranges: 4,
            args: &[],
            env: &[],
            workload: WorkloadConfig::default(),
            early: false,
            before_start: None,
        }
    }
}

pub struct Run {
    pub name: String,
    pub cluster: Cluster,
    workload: Option<Workload>,
    /// (what, start ns, end ns) of each fault, in workload time.
    faults: Vec<(String, u64, Option<u64>)>,
    pub isolated: bool,
    started: Instant,
}

impl Run {
    pub fn start(name: &str, setup: Setup<'_>) -> Run {
        let started = Instant::now();
        let mut cluster = Cluster::prepare(name, setup.nodes, setup.ranges, setup.args, setup.env);
        if let Some(before_start) = setup.before_start {
            before_start(&cluster);
        }
        cluster.start_all();
        let addrs = cluster.nodes.iter().map(|n| n.resp).collect();
        if !setup.early {
            wait_until("every range has a leader", Duration::from_secs(60), || all_ranges_led(&cluster));
        }
        let workload = Workload::start(addrs, setup.workload);
        eprintln!("[{name}] cluster of {} up in {:?}", setup.nodes, started.elapsed());
        Run {
            name: name.to_string(),
            cluster,
            workload: Some(workload),
            faults: Vec::new(),
            isolated: std::env::var("FLOTILLA_NETNS_INSIDE").is_ok(),
            started,
        }
    }

    fn now(&self) -> u64 {
        self.workload.as_ref().map_or(0, |w| w.now())
    }

    /// Marks the start of a fault (for the availability figures).
    pub fn fault(&mut self, what: &str) {
        eprintln!("[{}] {:>6.1} s  fault: {what}", self.name, self.started.elapsed().as_secs_f64());
        let now = self.now();
        self.faults.push((what.to_string(), now, None));
    }

    /// Marks the end of the latest fault.
    pub fn fault_over(&mut self) {
        let now = self.now();
        if let Some(last) = self.faults.last_mut() {
            last.2.get_or_insert(now);
        }
        eprintln!("[{}] {:>6.1} s  fault over", self.name, self.started.elapsed().as_secs_f64());
    }

    /// One fault cycle: note `what`, `inject` it, hold it for `hold`, `heal` it, note its end,
    /// and give the cluster `rest` before the next.
    pub fn cycle(
        &mut self,
        what: &str,
        hold: Duration,
        rest: Duration,
        inject: impl FnOnce(&mut Cluster),
        heal: impl FnOnce(&mut Cluster),
    ) {
        self.fault(what);
        inject(&mut self.cluster);
        self.sleep(hold);
        heal(&mut self.cluster);
        self.fault_over();
        self.sleep(rest);
    }

    pub fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    /// The leader of the range holding `key`, waiting for one.
    pub fn leader_of(&self, key: &[u8]) -> usize {
        let mut leader = None;
        wait_until("a leader for the key", Duration::from_secs(30), || {
            leader = self.cluster.leader_of_key(key);
            leader.is_some()
        });
        leader.unwrap()
    }

    /// Range ids led by `node`, from its `/status`.
    pub fn ranges_led_by(&self, node: usize) -> Vec<u64> {
        self.cluster.status(node).map_or_else(Vec::new, |s| {
            s["ranges"]
                .as_array()
                .map(|rs| {
                    rs.iter().filter(|r| r["role"] == "leader").filter_map(|r| r["id"].as_u64()).collect()
                })
                .unwrap_or_default()
        })
    }

    /// Asks `node` (which must lead `range`) to hand it to `to`; returns whether it agreed.
    pub fn transfer_leader(&self, node: usize, range: u64, to: usize) -> bool {
        let path = format!("/admin/transfer-leader?range={range}&to={to}");
        http_get(self.cluster.nodes[node - 1].http, &path).is_ok_and(|b| b.starts_with("asked"))
    }

    /// Heals every fault, stops the workload, checks everything, prints and saves the report,
    /// and fails the test on any violation.
    pub fn finish(&mut self) -> Report {
        if self.faults.last().is_some_and(|f| f.2.is_none()) {
            self.fault_over();
        }
        if self.isolated {
            netns::heal();
        }
        for id in 1..=self.cluster.nodes.len() {
            if let Some(status) = self.cluster.exited(id) {
                eprintln!("[{}] node {id} had exited ({status}); restarting it", self.name);
            }
            if self.cluster.is_up(id) {
                self.cluster.signal(id, "CONT");
            } else {
                self.cluster.spawn(id);
            }
        }
        for id in 1..=self.cluster.nodes.len() {
            self.cluster.wait_ping(id);
        }
        // Keep the workload running a little after the heal: the cluster must serve again.
        let recovery = self.time_to_serve_every_range();
        std::thread::sleep(Duration::from_millis(500));
        let records = self.workload.take().expect("workload").stop();
        let mut report = Report::new(&self.name, &records, &self.faults);
        report.recovery = recovery;

        report.converged = self.wait_converged();
        report.leaders_per_term = self.leaders_per_term_violations();
        self.check_set(&records, &mut report);
        report.registers = Some(check_registers(&self.name, &records));
        report.finish(&self.cluster);
        report
    }

    /// Time until a write succeeds in every range, probing each through node 1's gateway.
    fn time_to_serve_every_range(&self) -> Option<Duration> {
        let start = Instant::now();
        let probes: Vec<Vec<u8>> = range_starts(&self.cluster)
            .into_iter()
            .map(|mut start| {
                if start.is_empty() {
                    start.push(b'!');
                }
                start.extend_from_slice(b"~probe");
                start
            })
            .collect();
        for key in probes {
            let ok = wait_for_ok(Duration::from_secs(60), || {
                self.cluster.nodes.iter().any(|n| {
                    workload::connect(n.resp)
                        .and_then(|mut c| c.call(&[b"SET", &key, b"p"]))
                        .is_ok_and(|r| r == workload::Reply::Simple("OK".into()))
                })
            });
            if !ok {
                return None;
            }
        }
        Some(start.elapsed())
    }

    /// Waits until every replica of every range reports the same applied index and data hash.
    fn wait_converged(&self) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(60) {
            match digests(&self.cluster) {
                Ok(by_range) => {
                    let diverged: Vec<String> = by_range
                        .iter()
                        .filter(|(_, replicas)| replicas.values().collect::<BTreeSet<_>>().len() > 1)
                        .map(|(range, replicas)| format!("r{range}: {replicas:?}"))
                        .collect();
                    if diverged.is_empty() && !by_range.is_empty() {
                        return Ok(start.elapsed());
                    }
                    last = diverged.join("; ");
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("replicas did not converge within 60 s: {last}"))
    }

    /// (range, term) pairs claimed by more than one node, from the "became leader" log lines.
    fn leaders_per_term_violations(&self) -> Vec<String> {
        let mut claims: BTreeMap<(u64, u64), BTreeSet<u64>> = BTreeMap::new();
        for id in 1..=self.cluster.nodes.len() {
            let log = std::fs::read_to_string(self.cluster.dir.path().join(format!("n{id}.log")))
                .unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("became leader")) {
                let line = &strip_ansi(line);
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok())
                };
                if let (Some(node), Some(range), Some(term)) = (field("node"), field("range"), field("term"))
                {
                    claims.entry((range, term)).or_default().insert(node);
                }
            }
        }
        if claims.is_empty() {
            return vec!["no \"became leader\" line in any node's log: the check would prove nothing".into()];
        }
        claims
            .into_iter()
            .filter(|(_, nodes)| nodes.len() > 1)
            .map(|((range, term), nodes)| format!("range {range} term {term}: leaders {nodes:?}"))
            .collect()
    }

    /// Reads every set element back (linearizable GETs) and compares with what was reported.
    fn check_set(&self, records: &[Record], report: &mut Report) {
        let mut conn: Option<workload::Conn> = None;
        let mut node = 0;
        for r in records {
            let Action::Add { element } = &r.action else { continue };
            let mut present = None;
            let ok = wait_for_ok(Duration::from_secs(30), || {
                if conn.is_none() {
                    node = (node + 1) % self.cluster.nodes.len();
                    conn = workload::connect(self.cluster.nodes[node].resp).ok();
                }
                match conn.as_mut().map(|c| c.call(&[b"GET", element.as_bytes()])) {
                    Some(Ok(workload::Reply::Bulk(v))) => {
                        present = Some(v.is_some());
                        true
                    }
                    _ => {
                        conn = None;
                        false
                    }
                }
            });
            assert!(ok, "[{}] cannot read set element {element} back", self.name);
            match (&r.outcome, present == Some(true)) {
                (Outcome::Ok(_), false) => report.acked_lost.push(element.clone()),
                (Outcome::Failed(why), true) => report.failed_present.push(format!("{element} ({why})")),
                (Outcome::Unknown(_), true) => report.unknown_present += 1,
                (Outcome::Unknown(_), false) => report.unknown_absent += 1,
                _ => {}
            }
        }
    }
}

/// Converts the register operations to the checker's history and checks it; a history that
/// is not proven linearizable is saved (see `checker::history_path`) for `load_history`.
fn check_registers(name: &str, records: &[Record]) -> checker::Report {
    let mut history = Vec::new();
    for r in records {
        let (key, kind) = match &r.action {
            Action::Read { key } => (key.clone(), checker::OpKind::Read),
            Action::Write { key, value } => (key.clone(), checker::OpKind::write(value.clone().into_bytes())),
            Action::Add { .. } => continue,
        };
        let outcome = match &r.outcome {
            Outcome::Ok(Some(value)) => {
                checker::Outcome::Ok(checker::OpResult::Value(value.clone().map(String::into_bytes)))
            }
            Outcome::Ok(None) => checker::Outcome::Ok(checker::OpResult::Done),
            Outcome::Failed(_) => checker::Outcome::Failed,
            Outcome::Unknown(_) => checker::Outcome::Unknown,
        };
        let ret = (!matches!(outcome, checker::Outcome::Unknown)).then_some(r.ret);
        history.push(checker::Op {
            client: r.client,
            key: key.into_bytes(),
            kind,
            call: r.call,
            ret,
            outcome,
        });
    }
    let report = checker::check(&history);
    if !report.is_linearizable() {
        let path = checker::history_path(name);
        match checker::save_history(&path, &history) {
            Ok(()) => eprintln!("[{name}] register history saved to {}", path.display()),
            Err(e) => eprintln!("[{name}] cannot save the register history to {}: {e}", path.display()),
        }
    }
    report
}

/// Range start keys, from any live node's `/status`.
fn range_starts(cluster: &Cluster) -> Vec<Vec<u8>> {
    for id in cluster.up_nodes() {
        if let Some(status) = cluster.status(id) {
            if let Some(ranges) = status["ranges"].as_array() {
                return ranges.iter().filter_map(|r| r["start"].as_str()).map(hex).collect();
            }
        }
    }
    Vec::new()
}

/// range → node → (applied, hash).
type Digests = BTreeMap<u64, BTreeMap<usize, (u64, String)>>;

/// Every node's `/digest`.
fn digests(cluster: &Cluster) -> Result<Digests, String> {
    let mut out = Digests::new();
    for node in &cluster.nodes {
        let body = http_get(node.http, "/digest").map_err(|e| format!("/digest of node {}: {e}", node.id))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("/digest of node {}: {e}: {body}", node.id))?;
        for r in json["ranges"].as_array().ok_or_else(|| format!("node {}: {body}", node.id))? {
            let (Some(id), Some(applied), Some(hash)) =
                (r["id"].as_u64(), r["applied"].as_u64(), r["hash"].as_str())
            else {
                return Err(format!("node {}: bad digest {r}", node.id));
            };
            out.entry(id).or_default().insert(node.id, (applied, hash.to_string()));
        }
    }
    Ok(out)
}

fn all_ranges_led(cluster: &Cluster) -> bool {
    let Some(status) = cluster.status(1) else { return false };
    let Some(ranges) = status["ranges"].as_array() else { return false };
    !ranges.is_empty() && ranges.iter().all(|r| r["leader"].is_u64())
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

pub fn wait_until(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    assert!(wait_for_ok(timeout, ok), "timed out after {timeout:?} waiting for {what}");
}

fn wait_for_ok(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ok() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a scenario did and found.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Of the operations started while a fault was on: the share that succeeded.
    pub availability_during_faults: Option<f64>,
    /// Longest stretch without one successful operation, during the faults.
    pub longest_outage: Duration,
    /// The fault it happened in.
    pub longest_outage_in: String,
    /// From the heal until a write succeeded in every range.
    pub recovery: Option<Duration>,
    pub acked_lost: Vec<String>,
    pub failed_present: Vec<String>,
    pub unknown_present: u64,
    pub unknown_absent: u64,
    pub converged: Result<Duration, String>,
    pub leaders_per_term: Vec<String>,
    pub registers: Option<checker::Report>,
    pub faults: Vec<String>,
}

impl Report {
    fn new(name: &str, records: &[Record], faults: &[(String, u64, Option<u64>)]) -> Report {
        let count = |f: fn(&Outcome) -> bool| records.iter().filter(|r| f(&r.outcome)).count() as u64;
        let in_fault = |t: u64| faults.iter().any(|&(_, s, e)| t >= s && e.is_none_or(|e| t <= e));
        let during: Vec<&Record> = records.iter().filter(|r| in_fault(r.call)).collect();
        let availability = (!during.is_empty()).then(|| {
            during.iter().filter(|r| matches!(r.outcome, Outcome::Ok(_))).count() as f64 / during.len() as f64
        });
        // Longest gap between successful returns, within the fault windows.
        let (mut longest, mut longest_in) = (0u64, String::new());
        let last_return = records.iter().map(|r| r.ret).max().unwrap_or(0);
        for (what, s, e) in faults {
            let (s, e) = (*s, *e);
            let mut gap = 0u64;
            let e = e.unwrap_or(u64::MAX).min(last_return);
            let mut last = s;
            let mut oks: Vec<u64> = records
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Ok(_)) && r.ret >= s && r.ret <= e)
                .map(|r| r.ret)
                .collect();
            oks.sort_unstable();
            for t in oks {
                gap = gap.max(t - last);
                last = t;
            }
            gap = gap.max(e.saturating_sub(last));
            if gap > longest {
                (longest, longest_in) = (gap, what.clone());
            }
        }
        Report {
            name: name.to_string(),
            ok: count(|o| matches!(o, Outcome::Ok(_))),
            failed: count(|o| matches!(o, Outcome::Failed(_))),
            unknown: count(|o| matches!(o, Outcome::Unknown(_))),
            availability_during_faults: availability,
            longest_outage: Duration::from_nanos(longest),
            longest_outage_in: longest_in,
            recovery: None,
            acked_lost: Vec::new(),
            failed_present: Vec::new(),
            unknown_present: 0,
            unknown_absent: 0,
            converged: Err("not checked".into()),
            leaders_per_term: Vec::new(),
            registers: None,
            faults: faults.iter().map(|(w, _, _)| w.clone()).collect(),
        }
    }

    pub fn text(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{} ms", d.as_millis()));
        let mut out = String::new();
        out.push_str(&format!("== nemesis scenario {} ==\n", self.name));
        out.push_str(&format!("faults: {}\n", self.faults.join("; ")));
        out.push_str(&format!("ops: {} ok, {} failed, {} unknown\n", self.ok, self.failed, self.unknown));
        out.push_str(&format!(
            "availability during faults: {}; longest outage {} ms{}\n",
            self.availability_during_faults.map_or("n/a".into(), |a| format!("{:.1}%", a * 100.0)),
            self.longest_outage.as_millis(),
            if self.longest_outage_in.is_empty() {
                String::new()
            } else {
                format!(" (in: {})", self.longest_outage_in)
            }
        ));
        out.push_str(&format!("recovery after heal (a write in every range): {}\n", ms(self.recovery)));
        out.push_str(&format!(
            "set: acknowledged-but-lost {}, failed-but-present {}, unknown present/absent {}/{}\n",
            self.acked_lost.len(),
            self.failed_present.len(),
            self.unknown_present,
            self.unknown_absent
        ));
        out.push_str(&format!(
            "convergence: {}\n",
            match &self.converged {
                Ok(d) => format!("every replica equal after {} ms", d.as_millis()),
                Err(e) => e.clone(),
            }
        ));
        out.push_str(&format!("leaders per term: {} violations\n", self.leaders_per_term.len()));
        match &self.registers {
            Some(r) => out.push_str(&format!("registers: {r}\n")),
            None => out.push_str("registers: not checked\n"),
        }
        out
    }

    /// Prints and saves the report; panics (fails the test) on any violation.
    fn finish(&self, cluster: &Cluster) {
        let text = self.text();
        eprintln!("{text}");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(if soak() {
            "target/nemesis/soak"
        } else {
            "target/nemesis"
        });
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}.txt", self.name)), &text);
        let mut problems = Vec::new();
        if !self.acked_lost.is_empty() {
            problems.push(format!("acknowledged writes lost: {:?}", first(&self.acked_lost)));
        }
        if !self.failed_present.is_empty() {
            problems.push(format!("failed writes present: {:?}", first(&self.failed_present)));
        }
        if let Err(e) = &self.converged {
            problems.push(e.clone());
        }
        if !self.leaders_per_term.is_empty() {
            problems.push(format!("two leaders in one term: {:?}", self.leaders_per_term));
        }
        match &self.registers {
            Some(r) if r.is_linearizable() => {}
            Some(r) => problems.push(format!("register history not proven linearizable: {r}")),
            None => problems.push("register history not checked".into()),
        }
        if self.recovery.is_none() {
            problems.push("some range never accepted a write after the heal".into());
        }
        if self.ok < 50 {
            problems.push(format!("only {} operations succeeded: the scenario proved little", self.ok));
        }
        if !problems.is_empty() {
            let logs: String = (1..=cluster.nodes.len())
                .map(|id| format!("--- node {id}\n{}\n", cluster.log_tail(id)))
                .collect();
            panic!("[{}] {}\n{logs}", self.name, problems.join("\n"));
        }
    }
}

fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(5)]
}
