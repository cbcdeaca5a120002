//! The nemesis suite: real `flotilla` processes under kills, pauses, partitions, packet loss,
//! leader transfers, skewed clocks, lost unsynced writes, corrupted files and full disks, with
//! a register + set workload through RESP, and after every scenario the checks of
//! `faults::Run::finish` (convergence, one leader per term, no acknowledged write lost, no
//! failed write present, linearizable registers). `FLOTILLA_SOAK=1` runs each fault phase
//! several times longer. Scenarios that need network namespaces re-run themselves inside one
//! (root + `nft`), or are skipped with a printed reason. See docs/TESTING.md.

mod checker;
mod faults;
mod harness;

use std::time::{Duration, Instant};

use faults::workload::{register_key, WorkloadConfig};
use faults::{netns, phase, rounds, Run, Setup};

/// Picks a pseudo-random number from the wall clock (scenarios vary run to run; every choice is
/// printed, and the checks do not depend on it).
fn pick(n: usize) -> usize {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (nanos.subsec_nanos() as usize / 7) % n.max(1)
}

fn other_than(node: usize, nodes: usize) -> usize {
    node % nodes + 1
}

#[test]
fn no_faults_high_contention() {
    let setup = Setup {
        workload: WorkloadConfig { clients: 10, registers: 2, read_percent: 50, write_percent: 40 },
        ..Setup::default()
    };
    let mut run = Run::start("no_faults_high_contention", setup);
    run.fault("none: 10 clients on 2 registers");
    run.sleep(phase(Duration::from_secs(8)));
    run.finish();
}

#[test]
fn kill_random_node_in_a_loop() {
    let mut run = Run::start("kill_random_node_in_a_loop", Setup::default());
    for _ in rounds(Duration::from_secs(9)) {
        let victim = pick(3) + 1;
        run.cycle(
            &format!("SIGKILL node {victim}"),
            Duration::from_millis(1_500),
            Duration::from_millis(1_000),
            |c| c.kill(victim),
            |c| c.restart(victim),
        );
    }
    run.finish();
}

#[test]
fn kill_the_leader_of_a_range() {
    let mut run = Run::start("kill_the_leader_of_a_range", Setup::default());
    let key = register_key(0, 6);
    for _ in rounds(Duration::from_secs(8)) {
        let leader = run.leader_of(key.as_bytes());
        run.cycle(
            &format!("SIGKILL node {leader}, leader of {key}'s range"),
            Duration::from_millis(2_500),
            Duration::from_millis(1_000),
            |c| c.kill(leader),
            |c| c.restart(leader),
        );
    }
    run.finish();
}

#[test]
fn kill_a_majority_then_all_and_restart() {
    let mut run = Run::start("kill_a_majority_then_all_and_restart", Setup::default());
    run.sleep(Duration::from_secs(1));
    let spared = pick(3) + 1;
    let majority: Vec<usize> = (1..=3).filter(|&n| n != spared).collect();
    run.fault(&format!("SIGKILL nodes {majority:?} (a majority)"));
    for &n in &majority {
        run.cluster.kill(n);
    }
    run.sleep(phase(Duration::from_secs(3)));
    for &n in &majority {
        run.cluster.restart(n);
    }
    run.fault_over();
    run.sleep(Duration::from_secs(2));
    run.fault("SIGKILL every node");
    for n in 1..=3 {
        run.cluster.kill(n);
    }
    run.sleep(Duration::from_secs(2));
    for n in 1..=3 {
        run.cluster.spawn(n);
    }
    for n in 1..=3 {
        run.cluster.wait_ping(n);
    }
    run.fault_over();
    run.sleep(Duration::from_secs(2));
    run.finish();
}

#[test]
fn pause_a_leader_past_its_lease() {
    let mut run = Run::start("pause_a_leader_past_its_lease", Setup::default());
    let key = register_key(1, 6);
    for _ in rounds(Duration::from_secs(8)) {
        let leader = run.leader_of(key.as_bytes());
        run.cycle(
            &format!("SIGSTOP node {leader} (leader of {key}'s range) for 3 s"),
            Duration::from_secs(3),
            Duration::from_millis(1_500),
            |c| c.signal(leader, "STOP"),
            |c| c.signal(leader, "CONT"),
        );
    }
    run.finish();
}

#[test]
fn leader_transfers_under_load() {
    transfers("leader_transfers_under_load", false);
}

#[test]
fn leader_transfers_with_kills() {
    transfers("leader_transfers_with_kills", true);
}

fn transfers(name: &str, with_kills: bool) {
    let mut run = Run::start(name, Setup::default());
    let mut asked = 0;
    run.fault(if with_kills {
        "leader transfers every 300 ms, a kill every 3 s"
    } else {
        "leader transfers every 300 ms"
    });
    for round in rounds(Duration::from_secs(9)) {
        for node in run.cluster.up_nodes() {
            for range in run.ranges_led_by(node) {
                let to = (node + pick(2)) % 3 + 1;
                if to != node && run.cluster.is_up(to) && run.transfer_leader(node, range, to) {
                    asked += 1;
                }
            }
        }
        if with_kills && round % 10 == 0 {
            let victim = pick(3) + 1;
            eprintln!("[{name}] SIGKILL node {victim}");
            run.cluster.kill(victim);
            run.sleep(Duration::from_millis(1_000));
            run.cluster.restart(victim);
        }
        run.sleep(Duration::from_millis(300));
    }
    run.fault_over();
    eprintln!("[{name}] {asked} leader transfers asked");
    assert!(asked >= 5, "only {asked} transfers were asked: the scenario tested little");
    run.finish();
}

#[test]
fn clocks_running_fast_and_slow_under_lease_reads() {
    // Node 1 runs 15% fast and node 2 15% slow: within the lease's drift allowance (2 of 10
    // ticks each way). Leadership is moved onto the skewed nodes so that they serve lease reads.
    let setup = Setup {
        env: &[(Some(1), "FLOTILLA_TEST_CLOCK_RATE", "1.15"), (Some(2), "FLOTILLA_TEST_CLOCK_RATE", "0.85")],
        ..Setup::default()
    };
    let mut run = Run::start("clocks_running_fast_and_slow_under_lease_reads", setup);
    run.fault("node 1 clock +15%, node 2 clock -15%; leaders moved between them; pauses of leaders");
    for round in rounds(Duration::from_secs(9)) {
        for node in run.cluster.up_nodes() {
            for range in run.ranges_led_by(node) {
                let to = if node == 1 { 2 } else { 1 };
                run.transfer_leader(node, range, to);
            }
        }
        if round % 3 == 0 {
            // A paused slow-clock leader must not serve lease reads after others moved on.
            run.cluster.signal(2, "STOP");
            run.sleep(Duration::from_millis(1_500));
            run.cluster.signal(2, "CONT");
        }
        run.sleep(Duration::from_millis(700));
    }
    run.finish();
}

#[test]
fn faults_within_five_seconds_of_birth() {
    let setup = Setup { early: true, ..Setup::default() };
    let mut run = Run::start("faults_within_five_seconds_of_birth", setup);
    let victim = pick(3) + 1;
    run.fault(&format!("SIGKILL node {victim} at birth"));
    run.sleep(Duration::from_millis(300));
    run.cluster.kill(victim);
    run.sleep(Duration::from_millis(1_500));
    run.cluster.restart(victim);
    let paused = other_than(victim, 3);
    run.fault(&format!("SIGSTOP node {paused} for 2 s"));
    run.cluster.signal(paused, "STOP");
    run.sleep(Duration::from_secs(2));
    run.cluster.signal(paused, "CONT");
    run.fault_over();
    run.sleep(phase(Duration::from_secs(3)));
    run.finish();
}

// ---------------------------------------------------------------- network (namespaced)

#[test]
fn isolate_a_leader() {
    if !netns::run_isolated("isolate_a_leader") {
        return;
    }
    let mut run = Run::start("isolate_a_leader", Setup::default());
    let key = register_key(2, 6);
    for _ in rounds(Duration::from_secs(8)) {
        let leader = run.leader_of(key.as_bytes());
        let others: Vec<usize> = (1..=3).filter(|&n| n != leader).collect();
        run.cycle(
            &format!("isolate node {leader} (leader of {key}'s range)"),
            Duration::from_secs(3),
            Duration::from_millis(1_500),
            |_| netns::split(&[leader], &others),
            |_| netns::heal(),
        );
    }
    run.finish();
}

#[test]
fn majority_minority_split() {
    if !netns::run_isolated("majority_minority_split") {
        return;
    }
    let setup = Setup { nodes: 5, ..Setup::default() };
    let mut run = Run::start("majority_minority_split", setup);
    for _ in rounds(Duration::from_secs(8)) {
        let a = pick(5) + 1;
        let b = a % 5 + 1;
        let majority: Vec<usize> = (1..=5).filter(|&n| n != a && n != b).collect();
        run.cycle(
            &format!("split {{{a},{b}}} | {majority:?}"),
            Duration::from_secs(3),
            Duration::from_millis(1_500),
            |_| netns::split(&[a, b], &majority),
            |_| netns::heal(),
        );
    }
    run.finish();
}

#[test]
fn one_way_partitions() {
    if !netns::run_isolated("one_way_partitions") {
        return;
    }
    let mut run = Run::start("one_way_partitions", Setup::default());
    let key = register_key(3, 6);
    for round in rounds(Duration::from_secs(8)) {
        let inbound = round % 2 == 1;
        let leader = run.leader_of(key.as_bytes());
        let cut = |_: &mut harness::Cluster| {
            for other in (1..=3).filter(|&n| n != leader) {
                if inbound {
                    netns::cut_one_way(other, leader);
                } else {
                    netns::cut_one_way(leader, other);
                }
            }
        };
        run.cycle(
            &format!(
                "node {leader} (leader) {} the others one way",
                if inbound { "hears nothing from" } else { "cannot reach" }
            ),
            Duration::from_secs(3),
            Duration::from_millis(1_500),
            cut,
            |_| netns::heal(),
        );
    }
    run.finish();
}

#[test]
fn twenty_percent_packet_loss() {
    if !netns::run_isolated("twenty_percent_packet_loss") {
        return;
    }
    let mut run = Run::start("twenty_percent_packet_loss", Setup::default());
    run.fault("20% of node-to-node packets dropped");
    netns::lose(20);
    run.sleep(phase(Duration::from_secs(8)));
    netns::heal();
    run.fault_over();
    run.finish();
}

// ---------------------------------------------------------------- disks

#[test]
fn lost_unsynced_writes_on_crash() {
    // Each node keeps unsynced writes in its own memory (FLOTILLA_TEST_LOSE_UNSYNCED), so a
    // SIGKILL loses exactly what a power cut would; kills hit leaders and followers.
    let setup = Setup { env: &[(None, "FLOTILLA_TEST_LOSE_UNSYNCED", "1")], ..Setup::default() };
    let mut run = Run::start("lost_unsynced_writes_on_crash", setup);
    assert!(run.cluster.log(1).contains("FLOTILLA_TEST_LOSE_UNSYNCED=1"), "the write-back mode is not on");
    for k in rounds(Duration::from_secs(9)) {
        let victim = if k % 2 == 0 { run.leader_of(register_key(k % 6, 6).as_bytes()) } else { pick(3) + 1 };
        run.cycle(
            &format!("power-cut node {victim} (unsynced writes lost)"),
            Duration::from_millis(1_200),
            Duration::from_millis(800),
            |c| c.kill(victim),
            |c| c.restart(victim),
        );
    }
    run.finish();
}

#[test]
fn a_disk_fills_up() {
    // Node 3's data directory is a small tmpfs (in this test's own mount namespace); a filler
    // file leaves it little room, and large writes fill it. The node must stop with a clear
    // error, nothing acknowledged may be lost, and after space is freed it catches up.
    if !netns::run_isolated("a_disk_fills_up") {
        return;
    }
    fn mount_small_disk(cluster: &harness::Cluster) {
        let dir = cluster.data_dir(3);
        std::fs::create_dir_all(&dir).expect("data dir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=48m", "flotilla-nemesis"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs on {}", dir.display());
    }
    let setup = Setup { before_start: Some(mount_small_disk), ..Setup::default() };
    let mut run = Run::start("a_disk_fills_up", setup);
    let filler = run.cluster.data_dir(3).join("filler");
    // Leave about 6 MiB free.
    let free = fs_free_bytes(&run.cluster.data_dir(3));
    std::fs::write(&filler, vec![0u8; free.saturating_sub(6 << 20) as usize]).expect("filler");
    run.fault("node 3's disk fills up under 64 KiB writes");
    let big = vec![b'x'; 64 << 10];
    let mut acked = Vec::new();
    let addr = run.cluster.nodes[0].resp;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stopped = None;
    let mut i = 0;
    while Instant::now() < deadline && stopped.is_none() {
        i += 1;
        let key = format!("{}big-{i}", (b'!' + (i % 90) as u8) as char);
        if harness::resp(addr, &[b"SET", key.as_bytes(), &big])
            .is_ok_and(|r| r == harness::Reply::Simple("OK".into()))
        {
            acked.push(key);
        }
        stopped = run.cluster.exited(3);
    }
    let status = stopped.expect("node 3 never stopped although its disk is full");
    let log = run.cluster.log(3);
    assert!(
        log.contains("disk is full") || log.contains("No space left"),
        "no clear disk-full error:\n{}",
        run.cluster.log_tail(3)
    );
    eprintln!(
        "[a_disk_fills_up] node 3 stopped ({status}) after {} large writes were acknowledged",
        acked.len()
    );
    std::fs::remove_file(&filler).expect("free the space");
    run.fault_over();
    run.finish();
    // Every acknowledged large write is there, in full.
    for key in &acked {
        let reply = harness::resp(addr, &[b"GET", key.as_bytes()]).expect("read back");
        assert_eq!(reply, harness::Reply::Bulk(Some(big.clone())), "acknowledged {key} lost or damaged");
    }
}

fn fs_free_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

/// Waits until node `id` answers PING ("started") or exits ("refused to start (status)").
fn start_or_refuse(run: &mut Run, id: usize) -> String {
    let mut outcome = String::new();
    faults::wait_until("the node to start or refuse", Duration::from_secs(30), || {
        if let Some(status) = run.cluster.exited(id) {
            outcome = format!("refused to start ({status})");
            return true;
        }
        harness::resp(run.cluster.nodes[id - 1].resp, &[b"PING"]).is_ok() && {
            outcome = "started".into();
            true
        }
    });
    outcome
}

fn assert_refusal_names_corruption(run: &Run, id: usize) {
    let log = run.cluster.log(id).to_lowercase();
    assert!(
        log.contains("corrupt"),
        "node {id} stopped without naming the corruption:\n{}",
        run.cluster.log_tail(id)
    );
}

/// Flips one byte inside every copy of `value` in `path` that `pick` selects (given the bytes
/// that follow the copy); returns how many were flipped.
fn flip_copies(path: &std::path::Path, value: &[u8], pick: impl Fn(&[u8]) -> bool) -> usize {
    let mut bytes = std::fs::read(path).expect("read the data file");
    let (mut flipped, mut at) = (0, 0);
    while let Some(pos) = bytes[at..].windows(value.len()).position(|w| w == value) {
        let start = at + pos;
        let after = &bytes[start + value.len()..(start + value.len() + 4).min(bytes.len())];
        if pick(after) {
            bytes[start + 11] ^= 0x01;
            flipped += 1;
        }
        at = start + value.len();
    }
    std::fs::write(path, &bytes).expect("write the data file");
    flipped
}

#[test]
fn a_corrupted_byte_is_detected_and_never_served() {
    let mut run = Run::start("a_corrupted_byte_is_detected_and_never_served", Setup::default());
    let key = b"!corrupt-me".to_vec();
    let value = b"CORRUPT-ME-0123456789abcdefghijklmnopqrstuvwxyz-CORRUPT-ME".to_vec();
    faults::wait_until("the write of the victim value", Duration::from_secs(30), || {
        harness::resp(run.cluster.nodes[0].resp, &[b"SET", &key, &value])
            .is_ok_and(|r| r == harness::Reply::Simple("OK".into()))
    });
    run.sleep(Duration::from_secs(2)); // every replica applies it
    let mut corrupt = value.clone();
    corrupt[11] ^= 0x01;
    let path = run.cluster.data_dir(3).join("flotilla.redb");
    let stored_sum = flotilla_engine::storage::crc32c(&[key.as_slice(), &value].concat()).to_le_bytes();

    // 1. The stored value only (the copy followed by its checksum): node 3 starts, and must
    //    never serve the damaged value, even while it leads the key's range.
    run.fault("flip one byte of a stored value in node 3's stopped data file");
    run.cluster.kill(3);
    let flipped = flip_copies(&path, &value, |after| after == stored_sum);
    assert!(flipped > 0, "the stored value is not in node 3's file");
    run.cluster.spawn(3);
    let outcome = start_or_refuse(&mut run, 3);
    eprintln!("[corrupted byte] stored value damaged ({flipped} copies): node 3 {outcome}");
    if outcome == "started" {
        let (mut led, mut refused) = (false, 0);
        for _ in 0..40 {
            let leader = run.leader_of(&key);
            if leader == 3 {
                led = true;
            } else {
                for r in run.ranges_led_by(leader) {
                    run.transfer_leader(leader, r, 3);
                }
            }
            for node in run.cluster.up_nodes() {
                match harness::resp(run.cluster.nodes[node - 1].resp, &[b"GET", &key]) {
                    Ok(harness::Reply::Bulk(Some(v))) => {
                        assert_ne!(v, corrupt, "node {node} served the corrupted value");
                        assert_eq!(v, value, "node {node} served a value never written");
                    }
                    Ok(harness::Reply::Error(e)) if e.contains("corrupt") => refused += 1,
                    _ => {}
                }
            }
            if led && refused > 0 || run.cluster.exited(3).is_some() {
                break;
            }
            run.sleep(Duration::from_millis(250));
        }
        eprintln!("[corrupted byte] node 3 led the range: {led}; reads refused as corrupt: {refused}");
        assert!(
            led || run.cluster.log(3).contains("corrupt"),
            "node 3 never led the range: the check proved nothing"
        );
    } else {
        assert_refusal_names_corruption(&run, 3);
    }

    // 2. Every copy, the log entry's included: node 3 must refuse to start, naming it (or,
    //    if the entry was compacted away, keep refusing to serve the value).
    run.fault("flip one byte of every copy of the value (log entry too)");
    run.cluster.kill(3);
    let flipped = flip_copies(&path, &value, |_| true);
    run.cluster.spawn(3);
    let outcome = start_or_refuse(&mut run, 3);
    eprintln!("[corrupted byte] {flipped} copies damaged; node 3 {outcome}");
    if outcome == "started" {
        let reply = harness::resp(run.cluster.nodes[2].resp, &[b"GET", &key]);
        let served_corrupt = matches!(reply, Ok(harness::Reply::Bulk(Some(ref v))) if *v == corrupt);
        assert!(!served_corrupt, "node 3 served the corrupted value");
    } else {
        assert_refusal_names_corruption(&run, 3);
    }
    run.fault_over();
    // Repairing a damaged replica (replacing it from its peers) needs the placement service;
    // until then the other two serve the value, and agree.
    let reply = harness::resp(run.cluster.nodes[0].resp, &[b"GET", &key]).expect("read through node 1");
    assert_eq!(reply, harness::Reply::Bulk(Some(value)));
}

#[test]
fn message_delay_reorder_duplication_and_loss() {
    // The transport's test-only chaos stage on every node: Raft batches delayed up to 30 ms,
    // 20% overtaken by later ones, 5% sent twice, 5% dropped.
    let setup = Setup {
        env: &[(None, "FLOTILLA_TEST_CHAOS", "delay_ms=30,reorder=0.2,dup=0.05,drop=0.05")],
        ..Setup::default()
    };
    let mut run = Run::start("message_delay_reorder_duplication_and_loss", setup);
    assert!(run.cluster.log(1).contains("FLOTILLA_TEST_CHAOS"), "the chaos stage is not on");
    run.fault("chaos on every link: delay <=30 ms, 20% reordered, 5% duplicated, 5% dropped");
    for k in rounds(Duration::from_secs(9)) {
        run.sleep(Duration::from_secs(3));
        if k % 2 == 0 {
            let leader = run.leader_of(register_key(k % 6, 6).as_bytes());
            eprintln!("[chaos] SIGKILL node {leader} (a leader)");
            run.cluster.kill(leader);
            run.sleep(Duration::from_millis(1_000));
            run.cluster.restart(leader);
        }
    }
    run.finish();
}
