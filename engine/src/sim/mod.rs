//! A seeded, deterministic simulator of Raft groups on a faulty network.
//!
//! One seed fixes everything: per-seed tuning (batch sizes, in-flight window, compaction
//! interval), clock skews, message delays, drops, duplicates and reorders, partitions
//! (symmetric, split, one-way), crashes and restarts from durable state, membership changes
//! through joint consensus, leader transfers, and client writes and reads. Invariants are
//! checked as events happen (`checker`); after the chaos phase every fault heals and each group
//! must elect a leader and commit a new proposal within a bound (liveness).
//!
//! Architecture invariant: nothing here reads a clock, the OS RNG, or iterates a hash map, so a
//! seed's output is byte-identical on every run.

mod checker;
mod nodes;
mod world;

pub use checker::Violation;
pub use nodes::{run_node_seed, NodeSimOptions};
pub use world::{SeedReport, SimOptions, Stats};

use world::World;

/// Runs one seed to completion (or to its first violation).
///
/// A panic inside the core (a failed assertion) is caught and reported as a violation of that
/// seed, so a run over many seeds names the seed to replay.
pub fn run_seed(seed: u64, opts: &SimOptions) -> SeedReport {
    report_panics(seed, || World::new(seed, opts.clone()).run(seed))
}

/// Runs `run`, turning a panic into a violation of `seed` named "assertion".
fn report_panics(seed: u64, run: impl FnOnce() -> SeedReport) -> SeedReport {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".to_string());
        SeedReport {
            seed,
            stats: Stats::default(),
            sim_time_us: 0,
            violation: Some(Violation { invariant: "assertion", detail }),
            trace: Vec::new(),
        }
    })
}

impl SeedReport {
    /// One line of counts, identical for identical seeds.
    pub fn summary_line(&self) -> String {
        let s = &self.stats;
        format!(
            "seed {}: elections {} commits {} crashes {} partitions {} membership {} transfers {} snapshots {} reads {} sim {} ms violations {}",
            self.seed,
            s.elections,
            s.commits,
            s.crashes,
            s.partitions,
            s.membership_changes,
            s.transfers,
            s.snapshots,
            s.reads,
            self.sim_time_us / 1000,
            u32::from(self.violation.is_some()),
        )
    }
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.elections += other.elections;
        self.commits += other.commits;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.membership_changes += other.membership_changes;
        self.transfers += other.transfers;
        self.snapshots += other.snapshots;
        self.reads += other.reads;
        self.messages += other.messages;
    }
}
