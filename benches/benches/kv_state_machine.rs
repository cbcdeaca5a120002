//! The range state machine as it is today: the raw (pre-MVCC) key-value apply and read path of
//! `engine::kv` over `engine::storage`, on redb's in-memory backend so the figures are CPU only.
//! MVCC and transactions replace this layer later; these numbers are its baseline.
//!
//! - `kv_raw/apply_round_64_puts`: decode and apply 64 `Command::Put`s of 256 bytes in one
//!   round (one redb write transaction), as a driver round applies committed entries;
//! - `kv_raw/get`: a point read of one of 10,000 keys (`NodeStorage::get`, value CRC checked);
//! - `kv_raw/scan_100`: 100 pairs in key order (`NodeStorage::scan`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flotilla_engine::kv::{Command, SetCondition};
use flotilla_engine::storage::NodeStorage;
use std::hint::black_box;

const KEYS: u64 = 10_000;

fn key(i: u64) -> Vec<u8> {
    format!("user{:012}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % KEYS).into_bytes()
}

fn put(i: u64) -> Vec<u8> {
    Command::Put { key: key(i), value: vec![b'v'; 256], condition: SetCondition::Always }.encode()
}

fn bench(c: &mut Criterion) {
    let storage = NodeStorage::in_memory().unwrap();
    let mut round = storage.begin_round().unwrap();
    for i in 0..KEYS {
        Command::decode(&put(i)).unwrap().apply(&mut round).unwrap();
    }
    round.commit().unwrap();

    let mut group = c.benchmark_group("kv_raw");
    let mut next = 0u64;
    group.throughput(Throughput::Elements(64));
    group.bench_function("apply_round_64_puts", |b| {
        let encoded: Vec<Vec<u8>> = (0..1_024).map(put).collect();
        b.iter(|| {
            let mut round = storage.begin_round().unwrap();
            for _ in 0..64 {
                let command = Command::decode(&encoded[(next % 1_024) as usize]).unwrap();
                black_box(command.apply(&mut round).unwrap());
                next += 1;
            }
            round.commit_with(false).unwrap();
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("get", |b| {
        b.iter(|| {
            next += 1;
            black_box(storage.get(&key(next)).unwrap())
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("scan_100", |b| {
        b.iter(|| {
            next += 1;
            black_box(storage.scan(&key(next), &[], 100).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
