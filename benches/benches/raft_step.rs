//! The Raft core's CPU cost, no I/O: a 3-member group of `RawNode`s in memory, leader elected.
//!
//! - `raft/replicate_1_entry_3_members`: propose one 256-byte entry on the leader and drive
//!   `ready`/`step`/`advance` on all three members until it is committed and applied everywhere
//!   (persisting is free here: storage has its own benchmark).
//! - `raft/heartbeat_interval_3_members`: one heartbeat interval of an idle, awake group: every
//!   member ticks `heartbeat_ticks` times, the leader's heartbeats and the answers are stepped
//!   (the CPU an awake range costs per interval, all members summed; quiesced ranges skip it).

use criterion::{criterion_group, criterion_main, Criterion};
use flotilla_engine::raft::{Config, InitialState, Membership, Message, NodeId, RawNode, Role};
use std::hint::black_box;

fn group() -> Vec<RawNode> {
    let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let mut nodes: Vec<RawNode> = (1..=3)
        .map(|id| {
            RawNode::new(Config::new(NodeId(id)), InitialState::bootstrap(membership.clone()), id).unwrap()
        })
        .collect();
    nodes[0].campaign_now();
    pump(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader, "node 1 won the election");
    nodes
}

/// Runs every member's ready/advance and delivers messages until the group is quiet.
fn pump(nodes: &mut [RawNode]) {
    loop {
        let mut messages: Vec<Message> = Vec::new();
        for node in nodes.iter_mut() {
            if node.has_ready() {
                let ready = node.ready();
                messages.extend(ready.messages);
                black_box(&ready.committed_entries);
                node.advance();
            }
        }
        if messages.is_empty() {
            return;
        }
        for m in messages {
            let to = (m.to.0 - 1) as usize;
            nodes[to].step(m).unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut nodes = group();
    let payload = vec![7u8; 256];
    let mut proposed = 0u64;
    c.bench_function("raft/replicate_1_entry_3_members", |b| {
        b.iter(|| {
            let index = nodes[0].propose(payload.clone()).unwrap();
            pump(&mut nodes);
            assert!(nodes.iter().all(|n| n.commit_index() >= index));
            proposed += 1;
            // Compact now and then so the in-memory log (and memory) stays bounded, as a host
            // does; amortized over 1,024 proposals it is part of the steady-state cost.
            if proposed % 1_024 == 0 {
                for node in nodes.iter_mut() {
                    node.compact(index, Vec::new()).unwrap();
                }
            }
        })
    });
    let mut nodes = group();
    let heartbeat_ticks = Config::new(NodeId(1)).heartbeat_ticks;
    c.bench_function("raft/heartbeat_interval_3_members", |b| {
        b.iter(|| {
            for _ in 0..heartbeat_ticks {
                for node in nodes.iter_mut() {
                    node.tick();
                }
                pump(&mut nodes);
            }
            assert_eq!(nodes[0].role(), Role::Leader);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
