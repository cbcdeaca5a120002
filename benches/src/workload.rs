//! Workloads: what each client does next.
//!
//! A [`Workload`] hands every client an [`OpGenerator`] that yields [`Op`]s over key indices;
//! the harness turns indices into key bytes ([`crate::dist::key`]) and runs the op against any
//! target the same way. The YCSB core workloads A–F and the CockroachDB-style `kv0`/`kv95` are
//! all one [`MixWorkload`] with different proportions. A new kind of workload (bank transfers,
//! when transactions land) implements [`Workload`] and, if it needs a new operation, adds an
//! [`Op`] variant and a [`crate::target::Connection`] method with an "unsupported" default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_engine::rng::Rng;

use crate::dist::{unit, Distribution, KeyChooser};

/// One operation on key indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read {
        key: u64,
    },
    Update {
        key: u64,
    },
    Insert {
        key: u64,
    },
    /// Up to `limit` keys in key order from `start`'s key.
    Scan {
        start: u64,
        limit: usize,
    },
    /// Read a key, then write it (two round trips, timed together: YCSB F).
    ReadModifyWrite {
        key: u64,
    },
}

/// The kinds of [`Op`], for checking that a target supports a workload before running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Read,
    Write,
    Scan,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read { .. } => OpKind::Read,
            Op::Update { .. } | Op::Insert { .. } => OpKind::Write,
            Op::Scan { .. } => OpKind::Scan,
            Op::ReadModifyWrite { .. } => OpKind::Write,
        }
    }
}

/// A workload: shared between clients, each of which draws ops from its own generator.
pub trait Workload: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// A line for the report: the mix and the key distribution.
    fn describe(&self) -> String;
    /// The op kinds this workload issues; a target must support all of them.
    fn kinds(&self) -> Vec<OpKind>;
    /// Keys to write before measuring (`0..n`), so reads find data.
    fn preload_keys(&self) -> u64;
    /// A generator for one client, seeded so runs are repeatable.
    fn generator(self: Arc<Self>, seed: u64) -> Box<dyn OpGenerator>;
}

/// One client's source of ops.
pub trait OpGenerator: Send {
    fn next_op(&mut self) -> Op;
}

/// Proportions of each op; they need not sum to one (they are normalized).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Mix {
    pub read: f64,
    pub update: f64,
    pub insert: f64,
    pub scan: f64,
    pub read_modify_write: f64,
}

impl Mix {
    fn total(&self) -> f64 {
        self.read + self.update + self.insert + self.scan + self.read_modify_write
    }
}

/// The named workloads `--workload` accepts.
pub const WORKLOAD_NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "kv0", "kv95", "read", "scan"];

/// YCSB-style core workload: a mix of ops over `keys` keys with a key distribution.
#[derive(Debug)]
pub struct MixWorkload {
    name: String,
    mix: Mix,
    distribution: Distribution,
    keys: u64,
    scan_limit_max: usize,
    /// The next index an insert takes; starts at `keys` (the preloaded ones).
    next_insert: AtomicU64,
}

impl MixWorkload {
    pub fn new(name: &str, mix: Mix, distribution: Distribution, keys: u64, scan_limit_max: usize) -> Self {
        assert!(mix.total() > 0.0, "workload {name} has no ops");
        assert!(keys >= 1, "workload {name} needs at least one key");
        MixWorkload {
            name: name.to_string(),
            mix,
            distribution,
            keys,
            scan_limit_max: scan_limit_max.max(1),
            next_insert: AtomicU64::new(keys),
        }
    }

    /// A named workload with its default distribution unless `distribution` overrides it.
    pub fn named(
        name: &str,
        keys: u64,
        distribution: Option<Distribution>,
        scan_limit_max: usize,
    ) -> Result<Self, String> {
        let m = |read, update, insert, scan, read_modify_write| Mix {
            read,
            update,
            insert,
            scan,
            read_modify_write,
        };
        let (mix, default) = match name {
            "a" => (m(0.5, 0.5, 0.0, 0.0, 0.0), Distribution::Zipfian),
            "b" => (m(0.95, 0.05, 0.0, 0.0, 0.0), Distribution::Zipfian),
            "c" => (m(1.0, 0.0, 0.0, 0.0, 0.0), Distribution::Zipfian),
            "d" => (m(0.95, 0.0, 0.05, 0.0, 0.0), Distribution::Latest),
            "e" => (m(0.0, 0.0, 0.05, 0.95, 0.0), Distribution::Zipfian),
            "f" => (m(0.5, 0.0, 0.0, 0.0, 0.5), Distribution::Zipfian),
            "kv0" => (m(0.0, 1.0, 0.0, 0.0, 0.0), Distribution::Uniform),
            "kv95" => (m(0.95, 0.05, 0.0, 0.0, 0.0), Distribution::Uniform),
            "read" => (m(1.0, 0.0, 0.0, 0.0, 0.0), Distribution::Uniform),
            "scan" => (m(0.0, 0.0, 0.0, 1.0, 0.0), Distribution::Uniform),
            _ => {
                return Err(format!(
                    "unknown workload {name:?}: expected one of {}",
                    WORKLOAD_NAMES.join(", ")
                ))
            }
        };
        let label = match name {
            "a" | "b" | "c" | "d" | "e" | "f" => format!("ycsb-{name}"),
            _ => name.to_string(),
        };
        Ok(MixWorkload::new(&label, mix, distribution.unwrap_or(default), keys, scan_limit_max))
    }

    pub fn mix(&self) -> Mix {
        self.mix
    }

    pub fn distribution(&self) -> Distribution {
        self.distribution
    }
}

impl Workload for MixWorkload {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        let total = self.mix.total();
        let parts: Vec<String> = [
            ("read", self.mix.read),
            ("update", self.mix.update),
            ("insert", self.mix.insert),
            ("scan", self.mix.scan),
            ("read-modify-write", self.mix.read_modify_write),
        ]
        .iter()
        .filter(|(_, share)| *share > 0.0)
        .map(|(op, share)| format!("{:.0}% {op}", 100.0 * share / total))
        .collect();
        format!("{}, {} keys, {}", parts.join(" / "), self.keys, self.distribution)
    }

    fn kinds(&self) -> Vec<OpKind> {
        let mut kinds = Vec::new();
        if self.mix.read > 0.0 || self.mix.read_modify_write > 0.0 {
            kinds.push(OpKind::Read);
        }
        if self.mix.update > 0.0 || self.mix.insert > 0.0 || self.mix.read_modify_write > 0.0 {
            kinds.push(OpKind::Write);
        }
        if self.mix.scan > 0.0 {
            kinds.push(OpKind::Scan);
        }
        kinds
    }

    fn preload_keys(&self) -> u64 {
        // Writes alone (kv0) need nothing there; anything that reads does.
        let reads = self.mix.read + self.mix.scan + self.mix.read_modify_write;
        if reads > 0.0 {
            self.keys
        } else {
            0
        }
    }

    fn generator(self: Arc<Self>, seed: u64) -> Box<dyn OpGenerator> {
        let chooser = KeyChooser::new(self.distribution, self.keys);
        Box::new(MixGenerator { workload: self, rng: Rng::new(seed), chooser })
    }
}

struct MixGenerator {
    workload: Arc<MixWorkload>,
    rng: Rng,
    chooser: KeyChooser,
}

impl OpGenerator for MixGenerator {
    fn next_op(&mut self) -> Op {
        let w = &self.workload;
        let mut pick = unit(&mut self.rng) * w.mix.total();
        let existing = w.next_insert.load(Ordering::Relaxed);
        let mut next = |share: f64| {
            pick -= share;
            pick < 0.0
        };
        if next(w.mix.read) {
            Op::Read { key: self.chooser.choose(&mut self.rng, existing) }
        } else if next(w.mix.update) {
            Op::Update { key: self.chooser.choose(&mut self.rng, existing) }
        } else if next(w.mix.insert) {
            Op::Insert { key: w.next_insert.fetch_add(1, Ordering::Relaxed) }
        } else if next(w.mix.scan) {
            let limit = 1 + self.rng.below(w.scan_limit_max as u64) as usize;
            Op::Scan { start: self.chooser.choose(&mut self.rng, existing), limit }
        } else {
            Op::ReadModifyWrite { key: self.chooser.choose(&mut self.rng, existing) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(name: &str, draws: usize) -> [f64; 5] {
        let workload = Arc::new(MixWorkload::named(name, 1_000, None, 100).unwrap());
        let mut generator = workload.generator(11);
        let mut counts = [0usize; 5];
        for _ in 0..draws {
            let slot = match generator.next_op() {
                Op::Read { .. } => 0,
                Op::Update { .. } => 1,
                Op::Insert { .. } => 2,
                Op::Scan { .. } => 3,
                Op::ReadModifyWrite { .. } => 4,
            };
            counts[slot] += 1;
        }
        counts.map(|c| c as f64 / draws as f64)
    }

    #[test]
    fn ycsb_and_kv_mixes_have_their_ratios() {
        let expected: &[(&str, [f64; 5])] = &[
            ("a", [0.5, 0.5, 0.0, 0.0, 0.0]),
            ("b", [0.95, 0.05, 0.0, 0.0, 0.0]),
            ("c", [1.0, 0.0, 0.0, 0.0, 0.0]),
            ("d", [0.95, 0.0, 0.05, 0.0, 0.0]),
            ("e", [0.0, 0.0, 0.05, 0.95, 0.0]),
            ("f", [0.5, 0.0, 0.0, 0.0, 0.5]),
            ("kv0", [0.0, 1.0, 0.0, 0.0, 0.0]),
            ("kv95", [0.95, 0.05, 0.0, 0.0, 0.0]),
        ];
        for (name, want) in expected {
            let got = shares(name, 50_000);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 0.01, "workload {name}: got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn inserts_take_fresh_keys_and_scans_are_bounded() {
        let workload = Arc::new(MixWorkload::named("e", 1_000, None, 10).unwrap());
        let mut generator = workload.clone().generator(5);
        let mut inserted = Vec::new();
        for _ in 0..5_000 {
            match generator.next_op() {
                Op::Insert { key } => inserted.push(key),
                Op::Scan { start, limit } => {
                    assert!(start < 1_000 + inserted.len() as u64 + 1);
                    assert!((1..=10).contains(&limit));
                }
                op => panic!("workload e issued {op:?}"),
            }
        }
        let expected: Vec<u64> = (1_000..1_000 + inserted.len() as u64).collect();
        assert_eq!(inserted, expected);
        assert_eq!(workload.kinds(), vec![OpKind::Write, OpKind::Scan]);
    }

    #[test]
    fn writes_only_workloads_preload_nothing() {
        assert_eq!(MixWorkload::named("kv0", 500, None, 1).unwrap().preload_keys(), 0);
        assert_eq!(MixWorkload::named("b", 500, None, 1).unwrap().preload_keys(), 500);
        assert!(MixWorkload::named("g", 500, None, 1).is_err());
        let d = MixWorkload::named("d", 10, Some(Distribution::Uniform), 1).unwrap();
        assert_eq!(d.distribution(), Distribution::Uniform);
        assert_eq!(d.describe(), "95% read / 5% insert, 10 keys, uniform");
    }
}
