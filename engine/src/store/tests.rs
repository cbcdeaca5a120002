//! The host with three in-process nodes: in-memory redb storage, batches handed directly to
//! the peer's driver. Real threads and real time (short ticks); conditions are polled with
//! generous deadlines so the tests pass on a loaded machine.

#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::kv::SetCondition;

struct TestCluster {
    handles: Vec<StoreHandle>,
    /// Links that drop everything: (from, to).
    cut: Arc<Mutex<BTreeSet<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Runtime,
}

impl TestCluster {
    fn start(ranges: u32) -> TestCluster {
        TestCluster::start_with(ranges, |_| {})
    }

    fn start_with(ranges: u32, tweak: impl Fn(&mut StoreConfig)) -> TestCluster {
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let bootstrap = initial_ranges(ranges, &ids);
        let slots: Arc<Mutex<Vec<Option<StoreHandle>>>> = Arc::new(Mutex::new(vec![None, None, None]));
        let cut = Arc::new(Mutex::new(BTreeSet::new()));
        let mut handles = Vec::new();
        for &id in &ids {
            let mut cfg = StoreConfig::new(id);
            cfg.tick_interval = Duration::from_millis(10);
            cfg.election_ticks = 15;
            cfg.heartbeat_ticks = 3;
            cfg.quiesce_idle_ticks = 20;
            cfg.peer_dead_after = Duration::from_millis(600);
            tweak(&mut cfg);
            let (slots2, cut2) = (slots.clone(), cut.clone());
            let send: BatchSender = Arc::new(move |batch: RaftBatch| {
                if cut2.lock().unwrap().contains(&(batch.from.0, batch.to.0)) {
                    return;
                }
                let target = slots2.lock().unwrap()[(batch.to.0 - 1) as usize].clone();
                if let Some(h) = target {
                    h.deliver(batch);
                }
            });
            let peers = ids.iter().copied().filter(|&p| p != id).collect();
            let (handle, _thread) =
                start(cfg, NodeStorage::in_memory().unwrap(), &bootstrap, peers, send).unwrap();
            slots.lock().unwrap()[(id.0 - 1) as usize] = Some(handle.clone());
            handles.push(handle);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ticked, stop2) = (handles.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                for h in &ticked {
                    h.tick();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        TestCluster { handles, cut, stop, runtime }
    }

    fn leader(&self, range: RangeId) -> Option<usize> {
        self.handles
            .iter()
            .position(|h| h.status().ranges.iter().any(|r| r.id == range.0 && r.role == "leader"))
    }

    fn wait_leader(&self, range: RangeId) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(k) = self.leader(range) {
                return k;
            }
            assert!(Instant::now() < deadline, "no leader for {range}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes through whichever node leads, retrying until the deadline.
    fn put(&self, key: &[u8], value: &[u8]) -> CommandResult {
        let range = self.handles[0].range_for(key).unwrap().id;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let k = self.wait_leader(range);
            let command =
                Command::Put { key: key.to_vec(), value: value.to_vec(), condition: SetCondition::Always };
            match self.runtime.block_on(self.handles[k].propose(range, command)) {
                Ok(result) => return result,
                Err(e) => assert!(Instant::now() < deadline, "write never succeeded: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let range = self.handles[0].range_for(key).unwrap().id;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let k = self.wait_leader(range);
            match self.runtime.block_on(self.handles[k].read(range, ReadOp::Get { key: key.to_vec() })) {
                Ok(ReadResult::Value(v)) => return v,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => assert!(Instant::now() < deadline, "read never succeeded: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn writes_commit_and_reads_see_them_across_ranges() {
    let c = TestCluster::start(4);
    for i in 0..40u8 {
        let key = [i.wrapping_mul(37), i];
        assert_eq!(c.put(&key, &[i]), CommandResult::Written(true));
    }
    for i in 0..40u8 {
        let key = [i.wrapping_mul(37), i];
        assert_eq!(c.get(&key), Some(vec![i]), "key {key:?}");
    }
    assert_eq!(c.get(b"missing"), None);
}

#[test]
fn conditional_and_atomic_commands_apply_once() {
    let c = TestCluster::start(1);
    let range = RangeId(1);
    let k = c.wait_leader(range);
    let run = |command: Command| c.runtime.block_on(c.handles[k].propose(range, command)).unwrap();
    let put = |condition| Command::Put { key: b"nx".to_vec(), value: b"1".to_vec(), condition };
    assert_eq!(run(put(SetCondition::IfPresent)), CommandResult::Written(false));
    assert_eq!(run(put(SetCondition::IfAbsent)), CommandResult::Written(true));
    assert_eq!(run(put(SetCondition::IfAbsent)), CommandResult::Written(false));
    assert_eq!(run(Command::IncrBy { key: b"n".to_vec(), delta: 5 }), CommandResult::Integer(5));
    assert_eq!(run(Command::IncrBy { key: b"n".to_vec(), delta: -7 }), CommandResult::Integer(-2));
    assert!(matches!(run(Command::IncrBy { key: b"nx".to_vec(), delta: 1 }), CommandResult::Integer(2)));
    assert_eq!(run(Command::Append { key: b"s".to_vec(), suffix: b"ab".to_vec() }), CommandResult::Length(2));
    assert_eq!(run(Command::Append { key: b"s".to_vec(), suffix: b"c".to_vec() }), CommandResult::Length(3));
    assert_eq!(c.get(b"s"), Some(b"abc".to_vec()));
    assert_eq!(run(Command::Delete { keys: vec![b"s".to_vec(), b"zz".to_vec()] }), CommandResult::Deleted(1));
}

/// A follower cut off while the leader compacted its log catches up from a snapshot, which
/// the leader reads from its data when it sends it — at its applied index, later than its
/// compaction point — and labels with that index: appends are not idempotent, so data labelled
/// with an older index would have entries applied twice on the follower.
#[test]
fn a_lagging_follower_catches_up_from_a_snapshot_read_at_the_applied_index() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.log_retain_entries = 5;
        cfg.checkpoint_interval = Duration::from_millis(20);
        cfg.checkpoint_slices = 1;
    });
    let range = RangeId(1);
    let status_of = |k: usize| c.handles[k].status().ranges.into_iter().find(|r| r.id == range.0).unwrap();
    let follower = (c.wait_leader(range) + 1) % 3;
    let f = follower as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Appends through whichever other node leads; a refusal for not leading changed nothing.
    let append = |suffix: &[u8]| loop {
        let k = c.wait_leader(range);
        let command = Command::Append { key: b"s".to_vec(), suffix: suffix.to_vec() };
        match c.runtime.block_on(c.handles[k].propose(range, command)) {
            Ok(CommandResult::Length(n)) => return (k, n),
            Err(KvError::NotLeader { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("append on node {}: {other:?}", k + 1),
        }
    };
    c.cut.lock().unwrap().extend((1..=3).filter(|&o| o != f).flat_map(|o| [(o, f), (f, o)]));
    let behind = status_of(follower).applied;
    for _ in 0..60 {
        append(b"x");
    }
    // Wait until the leader's log is compacted past everything the follower has, then apply
    // a few entries after the compaction point, so that the leader's data is ahead of it.
    loop {
        let k = c.wait_leader(range);
        if k != follower && status_of(k).snapshot > behind + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never compacted: {:?}", status_of(k));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut length = 0;
    for _ in 0..3 {
        length = append(b"y").1;
    }
    assert_eq!(length, 63);
    c.cut.lock().unwrap().clear();
    loop {
        let digests: Vec<_> =
            c.handles.iter().map(|h| c.runtime.block_on(h.digests()).unwrap().remove(0)).collect();
        if digests.iter().all(|d| d == &digests[0]) {
            assert!(digests[0].applied.0 >= 63, "{digests:?}");
            break;
        }
        assert!(Instant::now() < deadline, "replicas never converged: {digests:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It caught up by a snapshot, not by appends (its status is published within 100 ms).
    while status_of(follower).applied < 63 {
        assert!(Instant::now() < deadline, "no fresh status: {:?}", status_of(follower));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(status_of(follower).snapshot > behind + 1, "{:?}", status_of(follower));
    assert_eq!(c.get(b"s").map(|v| v.len()), Some(63));
}

#[test]
fn idle_groups_quiesce_and_wake_on_write() {
    let c = TestCluster::start(8);
    c.put(b"warm", b"up");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all_quiet = c.handles.iter().all(|h| h.status().ranges.iter().all(|r| r.quiesced));
        if all_quiet {
            break;
        }
        assert!(Instant::now() < deadline, "groups never quiesced: {:?}", c.handles[0].status());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.put(b"warm", b"again"), CommandResult::Written(true));
    assert_eq!(c.get(b"warm"), Some(b"again".to_vec()));
}

#[test]
fn a_dead_leader_of_quiesced_groups_is_replaced() {
    let c = TestCluster::start(2);
    c.put(b"k", b"v1");
    // Let everything quiesce, then cut the leader of range 1 off completely.
    std::thread::sleep(Duration::from_millis(800));
    let range = c.handles[0].range_for(b"k").unwrap().id;
    let old = c.wait_leader(range);
    {
        let mut cut = c.cut.lock().unwrap();
        for other in 1..=3u64 {
            let me = old as u64 + 1;
            if other != me {
                cut.insert((me, other));
                cut.insert((other, me));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let new_leader = c.handles.iter().enumerate().find(|(k, h)| {
            *k != old && h.status().ranges.iter().any(|r| r.id == range.0 && r.role == "leader")
        });
        if let Some((k, _)) = new_leader {
            let command =
                Command::Put { key: b"k".to_vec(), value: b"v2".to_vec(), condition: SetCondition::Always };
            if c.runtime.block_on(c.handles[k].propose(range, command)).is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no new leader after the old one was cut off");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The driver as a task on a current-thread runtime (`--io-threads 0`), on a real data
/// directory: 200 concurrent writes make rounds of many entries, whose fsyncs run on a pool
/// thread while the runtime goes on; every write is answered and readable, and all of it is
/// there again after a restart.
#[test]
fn a_driver_on_the_runtime_commits_concurrent_writes_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let me = NodeId(1);
    let bootstrap = initial_ranges(1, &[me]);
    let range = bootstrap[0].id;
    let run = |writes: bool| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut cfg = StoreConfig::new(me);
            cfg.tick_interval = Duration::from_millis(10);
            let send: BatchSender = Arc::new(|_batch: RaftBatch| {});
            let storage = NodeStorage::open(&path).unwrap();
            let handle = start_on_runtime(cfg, storage, &bootstrap, Vec::new(), send).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while handle.leader_of(range) != Some(me) {
                assert!(Instant::now() < deadline, "the single replica never led");
                handle.tick();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if writes {
                let tasks: Vec<_> = (0..200u32)
                    .map(|i| {
                        let h = handle.clone();
                        tokio::spawn(async move {
                            let command = Command::Put {
                                key: format!("k{i:03}").into_bytes(),
                                value: i.to_be_bytes().to_vec(),
                                condition: SetCondition::Always,
                            };
                            h.propose(range, command).await
                        })
                    })
                    .collect();
                for task in tasks {
                    assert_eq!(task.await.unwrap(), Ok(CommandResult::Written(true)));
                }
            }
            for i in (0..200u32).step_by(7) {
                let got = handle.read(range, ReadOp::Get { key: format!("k{i:03}").into_bytes() }).await;
                assert_eq!(got, Ok(ReadResult::Value(Some(i.to_be_bytes().to_vec()))), "k{i:03}");
            }
            assert!(!handle.driver_stopped());
        });
    };
    run(true);
    run(false);
}

#[test]
fn a_driver_on_the_runtime_needs_a_current_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let _guard = runtime.enter();
    let send: BatchSender = Arc::new(|_batch: RaftBatch| {});
    let bootstrap = initial_ranges(1, &[NodeId(1)]);
    let started = start_on_runtime(
        StoreConfig::new(NodeId(1)),
        NodeStorage::in_memory().unwrap(),
        &bootstrap,
        Vec::new(),
        send,
    );
    assert!(matches!(started, Err(KvError::Invalid(_))), "{started:?}");
}
