//! One driver round's durable commit (`engine::storage::NodeStorage`): a redb write transaction
//! appending one 256-byte entry to each of N groups' logs plus their hard states, committed with
//! fsync — the group commit every write waits for. N = 1, 16, 128 shows how the fsync is shared.
//! The same round without fsync separates the CPU cost from the disk's.
//!
//! The database lives in a temporary directory on the default temp filesystem (`TMPDIR`): point
//! `TMPDIR` at the data disk to measure that one.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_engine::ids::RangeId;
use flotilla_engine::raft::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use flotilla_engine::storage::{GroupRecord, NodeStorage};
use std::time::Duration;

/// Rounds between log truncations (as Raft log compaction keeps logs short in a real node).
const TRUNCATE_EVERY_ROUNDS: u64 = 64;

struct Log {
    storage: NodeStorage,
    _dir: tempfile::TempDir,
    next_index: u64,
}

impl Log {
    fn new() -> Log {
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(&dir.path().join("node.redb")).unwrap();
        storage.claim(NodeId(1), "bench").unwrap();
        Log { storage, _dir: dir, next_index: 1 }
    }

    /// One round: an entry for each of `groups` groups, their records, one commit.
    fn round(&mut self, groups: u64, durable: bool) {
        let index = self.next_index;
        self.next_index += 1;
        let mut round = self.storage.begin_round().unwrap();
        for g in 1..=groups {
            let entry = Entry {
                term: Term(2),
                index: LogIndex(index),
                payload: EntryPayload::Normal(vec![g as u8; 256]),
            };
            round.append(RangeId(g), &[entry]).unwrap();
            let hard_state = HardState { term: Term(2), vote: Some(NodeId(1)), commit: LogIndex(index) };
            round
                .put_group(
                    RangeId(g),
                    &GroupRecord { hard_state, applied: LogIndex(index), ..GroupRecord::default() },
                )
                .unwrap();
            if index % TRUNCATE_EVERY_ROUNDS == 0 {
                round.truncate_prefix(RangeId(g), LogIndex(index - 1)).unwrap();
            }
        }
        round.commit_with(durable).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage/round_commit_fsync");
    group.sample_size(20).measurement_time(Duration::from_secs(4));
    for groups in [1u64, 16, 128] {
        let mut log = Log::new();
        group.throughput(Throughput::Elements(groups));
        group.bench_with_input(BenchmarkId::new("entries", groups), &groups, |b, &groups| {
            b.iter(|| log.round(groups, true))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("storage/round_commit_no_fsync");
    for groups in [1u64, 16] {
        let mut log = Log::new();
        group.throughput(Throughput::Elements(groups));
        group.bench_with_input(BenchmarkId::new("entries", groups), &groups, |b, &groups| {
            b.iter(|| log.round(groups, false))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
