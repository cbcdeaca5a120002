//! Real nodes under test chaos (`FLOTILLA_TEST_CHAOS`: Raft batches delayed, reordered,
//! duplicated and dropped) stay correct: every acknowledged write is read back, and counters
//! incremented concurrently end between the acknowledged and the acknowledged-plus-unknown
//! number of increments — a duplicated or reordered message never applies an entry twice.
//!
//! One test per binary: the environment variable is process-wide. Override the spec with
//! `FLOTILLA_CHAOS_TEST_SPEC`.

mod nodes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_router::client::{Client, ClientOptions};
use nodes::Cluster;
use tokio::time::Instant;

const DEFAULT_SPEC: &str = "delay_ms=20,reorder=0.2,dup=0.1,drop=0.1,seed=11";
const WORKERS: u64 = 16;
const RUN: Duration = Duration::from_secs(8);
const COUNTERS: u64 = 4;

#[derive(Default)]
struct Tally {
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    increments_ok: BTreeMap<u64, i64>,
    increments_unknown: BTreeMap<u64, i64>,
    failures: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_stays_correct_under_delay_reorder_duplication_and_drops() {
    let spec = std::env::var("FLOTILLA_CHAOS_TEST_SPEC").unwrap_or_else(|_| DEFAULT_SPEC.to_string());
    // Edition 2021: `set_var` is safe; no other thread reads the environment yet.
    std::env::set_var("FLOTILLA_TEST_CHAOS", &spec);
    // Short logs and small snapshot chunks, so that compaction and snapshots run under chaos too.
    let cluster = Arc::new(
        Cluster::start_with("client-chaos", 3, 4, |store| {
            store.log_retain_entries = 20;
            store.snapshot_chunk_bytes = 256;
        })
        .await,
    );
    let client =
        Client::connect(&cluster.addrs, ClientOptions::insecure().request_timeout(Duration::from_secs(20)))
            .await
            .expect("connect");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_at = Instant::now() + RUN;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, tally) = (client.clone(), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < stop_at {
                    i += 1;
                    if i % 2 == 0 {
                        let counter = (w + i) % COUNTERS;
                        let key = format!("{}counter", (b'!' + (counter * 23) as u8) as char).into_bytes();
                        let result = client.incr_by(&key, 1).await;
                        let mut t = tally.lock().expect("tally");
                        match result {
                            Ok(_) => *t.increments_ok.entry(counter).or_default() += 1,
                            Err(e) if e.is_outcome_unknown() => {
                                *t.increments_unknown.entry(counter).or_default() += 1
                            }
                            Err(_) => t.failures += 1,
                        }
                    } else {
                        let key = format!("{}w{w}-{i:06}", (b'!' + (i % 90) as u8) as char).into_bytes();
                        let value = format!("v{w}-{i}").into_bytes();
                        match client.put(&key, &value).await {
                            Ok(()) => {
                                // Read your write, linearizably, through whichever node leads now.
                                if let Ok(read) = client.get(&key).await {
                                    assert_eq!(read, Some(value.clone()), "acknowledged write not read back");
                                }
                                tally.lock().expect("tally").acked.insert(key, value);
                            }
                            Err(_) => tally.lock().expect("tally").failures += 1,
                        }
                    }
                }
            })
        })
        .collect();
    // Leadership moves every 700 ms, so stale, duplicated and reordered messages from old terms
    // meet new leaders.
    let nemesis = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            let mut moves = 0u64;
            while Instant::now() < stop_at {
                tokio::time::sleep(Duration::from_millis(700)).await;
                moves += 1;
                let range = cluster.nodes[0].store.ranges()[(moves % 4) as usize].id;
                let Some(leader) = cluster.nodes[0].store.leader_of(range) else { continue };
                let to = flotilla_engine::raft::NodeId(leader.0 % 3 + 1);
                let _ = cluster.node(leader).store.transfer_leader(range, to).await;
            }
            moves
        })
    };
    for worker in workers {
        worker.await.expect("worker");
    }
    let moves = nemesis.await.expect("nemesis");
    let tally = Arc::try_unwrap(tally).ok().expect("workers done").into_inner().expect("tally");
    assert!(tally.acked.len() > 20, "too little progress under chaos: {} writes", tally.acked.len());
    // Read everything back, a few readers at a time (reads under chaos take a heartbeat round).
    let acked: Vec<(Vec<u8>, Vec<u8>)> = tally.acked.clone().into_iter().collect();
    let readers: Vec<_> = acked
        .chunks(acked.len().div_ceil(8))
        .map(|chunk| {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for (key, value) in chunk {
                    assert_eq!(
                        client.get(&key).await.expect("final read"),
                        Some(value),
                        "lost write {key:?}"
                    );
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.expect("reader");
    }
    for counter in 0..COUNTERS {
        let key = format!("{}counter", (b'!' + (counter * 23) as u8) as char).into_bytes();
        let ok = tally.increments_ok.get(&counter).copied().unwrap_or(0);
        let unknown = tally.increments_unknown.get(&counter).copied().unwrap_or(0);
        let value: i64 = match client.get(&key).await.expect("counter read") {
            Some(bytes) => String::from_utf8(bytes).expect("utf8").parse().expect("integer"),
            None => 0,
        };
        assert!(
            ok <= value && value <= ok + unknown,
            "counter {counter}: {value} after {ok} acknowledged and {unknown} unknown increments"
        );
    }
    for node in &cluster.nodes {
        assert_eq!(node.store.fatal(), None, "{} stopped", node.id);
    }
    eprintln!(
        "chaos {spec}, {moves} leader moves: {} writes acknowledged, {} increments ok, {} unknown, {} failed; {:?}",
        tally.acked.len(),
        tally.increments_ok.values().sum::<i64>(),
        tally.increments_unknown.values().sum::<i64>(),
        tally.failures,
        client.stats()
    );
}
