//! Peer-frame encode/decode (`engine::transport::frame`): what every batch between nodes costs
//! on each side of the wire, for the two shapes that dominate — an append of 16 writes of
//! 256 bytes for one range, and 1,000 coalesced heartbeats (1,000 awake ranges).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flotilla_engine::ids::RangeId;
use flotilla_engine::raft::{Entry, EntryPayload, LogIndex, Message, MessageBody, NodeId, Term};
use flotilla_engine::transport::frame::{decode, encode};
use flotilla_engine::transport::wire::HeartbeatEntry;
use flotilla_engine::transport::RaftBatch;
use std::hint::black_box;

fn append_batch() -> RaftBatch {
    let entries = (0..16)
        .map(|i| Entry {
            term: Term(3),
            index: LogIndex(100 + i),
            payload: EntryPayload::Normal(vec![i as u8; 256]),
        })
        .collect();
    let body =
        MessageBody::Append { prev_index: LogIndex(99), prev_term: Term(3), entries, commit: LogIndex(98) };
    RaftBatch {
        from: NodeId(1),
        to: NodeId(2),
        messages: vec![(RangeId(7), Message { from: NodeId(1), to: NodeId(2), term: Term(3), body })],
        ..RaftBatch::default()
    }
}

fn heartbeat_batch() -> RaftBatch {
    let heartbeats = (0..1_000)
        .map(|r| HeartbeatEntry {
            range: RangeId(r),
            term: Term(2),
            commit: LogIndex(5_000 + r),
            read_seq: r * 3,
        })
        .collect();
    RaftBatch { from: NodeId(1), to: NodeId(2), heartbeats, ..RaftBatch::default() }
}

fn bench(c: &mut Criterion) {
    for (name, batch) in [("append_16x256B", append_batch()), ("heartbeats_1000", heartbeat_batch())] {
        let bytes = encode(&batch).unwrap();
        let mut group = c.benchmark_group(format!("frame/{name}"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("encode", |b| b.iter(|| encode(black_box(&batch)).unwrap()));
        group.bench_function("decode", |b| b.iter(|| decode(black_box(&bytes)).unwrap()));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
