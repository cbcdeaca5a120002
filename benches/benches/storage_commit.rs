//! One driver round's durable commit (`engine::storage::NodeStorage`): one 256-byte entry for
//! each of N groups, written as one log record with one fsync — the group commit every write
//! waits for (the groups' records change only in their commit and applied indexes, which need
//! no redb commit). N = 1, 16, 128 shows how the fsync is shared. Every 64th round also
//! checkpoints and compacts (a redb commit). The same rounds on the in-memory storage separate
//! the CPU cost from the disk's.
//!
//! The files live in a temporary directory on the default temp filesystem (`TMPDIR`): point
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
    fn new(on_disk: bool) -> Log {
        let dir = tempfile::tempdir().unwrap();
        let storage = if on_disk {
            NodeStorage::open(&dir.path().join("node.redb")).unwrap()
        } else {
            NodeStorage::in_memory().unwrap()
        };
        storage.claim(NodeId(1), "bench").unwrap();
        Log { storage, _dir: dir, next_index: 1 }
    }

    /// One round: an entry for each of `groups` groups, their records, one commit.
    fn round(&mut self, groups: u64) {
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
        }
        if index % TRUNCATE_EVERY_ROUNDS == 0 {
            // Compaction only goes as far as a checkpoint.
            round.checkpoint();
            for g in 1..=groups {
                round.truncate_prefix(RangeId(g), LogIndex(index - 1)).unwrap();
            }
        }
        round.commit().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage/round_commit_fsync");
    group.sample_size(20).measurement_time(Duration::from_secs(4));
    for groups in [1u64, 16, 128] {
        let mut log = Log::new(true);
        group.throughput(Throughput::Elements(groups));
        group.bench_with_input(BenchmarkId::new("entries", groups), &groups, |b, &groups| {
            b.iter(|| log.round(groups))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("storage/round_commit_in_memory");
    for groups in [1u64, 16] {
        let mut log = Log::new(false);
        group.throughput(Throughput::Elements(groups));
        group.bench_with_input(BenchmarkId::new("entries", groups), &groups, |b, &groups| {
            b.iter(|| log.round(groups))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
