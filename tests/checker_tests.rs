//! The history checker's own tests: histories it must accept, known-bad ones it must reject,
//! randomized histories of a simulated register (and impossible mutations of them), size and
//! search-effort bounds, and JSON-lines round trips.

mod checker;

use std::collections::HashMap;
use std::time::Instant;

use checker::*;

// ---- building histories by hand ----

fn v(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

fn ok(client: u64, kind: OpKind, call: u64, ret: u64, result: OpResult) -> Op {
    Op::new(client, "k", kind, call, Some(ret), Outcome::Ok(result))
}

fn write(client: u64, call: u64, ret: u64, value: &str) -> Op {
    ok(client, OpKind::write(value), call, ret, OpResult::Done)
}

fn read(client: u64, call: u64, ret: u64, seen: Option<&str>) -> Op {
    ok(client, OpKind::Read, call, ret, OpResult::Value(seen.and_then(v)))
}

fn unknown(client: u64, kind: OpKind, call: u64) -> Op {
    Op::new(client, "k", kind, call, None, Outcome::Unknown)
}

fn failed(client: u64, kind: OpKind, call: u64, ret: u64) -> Op {
    Op::new(client, "k", kind, call, Some(ret), Outcome::Failed)
}

fn on(key: &str, mut op: Op) -> Op {
    op.key = key.as_bytes().to_vec();
    op
}

#[track_caller]
fn accepts(history: &[Op]) -> Report {
    let r = check(history);
    assert_eq!(r.overall(), Overall::Linearizable, "should be linearizable:\n{r}");
    assert!(r.is_linearizable());
    r
}

#[track_caller]
fn rejects(history: &[Op]) -> Box<Violation> {
    let r = check(history);
    assert_eq!(r.overall(), Overall::NotLinearizable, "should NOT be linearizable:\n{r}");
    assert!(!r.is_linearizable() && r.has_violation());
    assert!(!format!("{r}").is_empty());
    let k = r.failures().next().expect("a failing key");
    match &k.verdict {
        Verdict::NotLinearizable(v) => v.clone(),
        other => panic!("{other:?}"),
    }
}

// ---- known-good histories ----

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    accepts(&[]);
    let r = accepts(&[
        read(1, 0, 1, None),
        write(1, 2, 3, "a"),
        read(2, 4, 5, Some("a")),
        write(2, 6, 7, "b"),
        read(1, 8, 9, Some("b")),
        ok(3, OpKind::delete(), 10, 11, OpResult::Int(1)),
        read(1, 12, 13, None),
        ok(3, OpKind::delete(), 14, 15, OpResult::Int(0)),
    ]);
    assert_eq!(r.keys.len(), 1);
    assert_eq!(r.keys[0].required, 8);
}

#[test]
fn a_read_overlapping_a_write_may_see_either_value() {
    for seen in [None, Some("a")] {
        accepts(&[write(1, 0, 100, "a"), read(2, 10, 20, seen)]);
    }
    // Two reads inside one write: old then new is fine.
    accepts(&[write(1, 0, 100, "a"), read(2, 10, 20, None), read(3, 30, 40, Some("a"))]);
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        accepts(&[
            write(1, 0, 100, "a"),
            write(2, 0, 100, "b"),
            read(3, 10, 20, Some(first)),
            read(3, 30, 40, Some(second)),
            read(4, 200, 210, Some(second)),
        ]);
    }
}

#[test]
fn read_seeing_a_later_called_write_is_fine_when_intervals_overlap() {
    // The read is called first but returns after the write is called.
    accepts(&[read(1, 0, 50, Some("a")), write(2, 40, 60, "a")]);
    // Equal timestamps count as overlapping.
    accepts(&[read(1, 0, 40, Some("a")), write(2, 40, 60, "a")]);
}

#[test]
fn an_unknown_write_may_have_happened() {
    accepts(&[
        write(1, 0, 10, "a"),
        unknown(2, OpKind::write("b"), 20),
        read(1, 30, 40, Some("b")),
        read(1, 50, 60, Some("b")),
    ]);
}

#[test]
fn an_unknown_write_may_not_have_happened() {
    accepts(&[write(1, 0, 10, "a"), unknown(2, OpKind::write("b"), 20), read(1, 30, 40, Some("a"))]);
}

#[test]
fn an_unknown_write_may_take_effect_long_after_its_call() {
    accepts(&[
        unknown(1, OpKind::write("a"), 0),
        write(2, 20, 30, "b"),
        read(3, 40, 50, Some("b")),
        read(3, 60, 70, Some("a")),
        read(3, 80, 90, Some("a")),
    ]);
}

#[test]
fn a_failed_write_that_nobody_saw_is_fine() {
    accepts(&[write(1, 0, 10, "a"), failed(2, OpKind::write("b"), 20, 30), read(1, 40, 50, Some("a"))]);
}

#[test]
fn concurrent_set_nx_one_wins() {
    accepts(&[
        ok(1, OpKind::SetNx(b"a".to_vec()), 0, 100, OpResult::Flag(true)),
        ok(2, OpKind::SetNx(b"b".to_vec()), 0, 100, OpResult::Flag(false)),
        read(3, 200, 300, Some("a")),
    ]);
    // SET XX on an absent key doesn't set; on a present one it does.
    accepts(&[
        ok(1, OpKind::SetXx(b"a".to_vec()), 0, 10, OpResult::Flag(false)),
        read(2, 20, 30, None),
        write(1, 40, 50, "b"),
        ok(1, OpKind::SetXx(b"c".to_vec()), 60, 70, OpResult::Flag(true)),
        read(2, 80, 90, Some("c")),
    ]);
}

#[test]
fn increments_and_appends() {
    accepts(&[
        ok(1, OpKind::Incr(1), 0, 100, OpResult::Int(2)),
        ok(2, OpKind::Incr(1), 0, 100, OpResult::Int(1)),
        unknown(3, OpKind::Incr(5), 10),
        read(4, 200, 210, Some("7")),
        ok(4, OpKind::Incr(-7), 220, 230, OpResult::Int(0)),
        ok(1, OpKind::Append(b"x".to_vec()), 240, 250, OpResult::Int(2)),
        ok(2, OpKind::Incr(1), 260, 270, OpResult::Error),
        read(2, 280, 290, Some("0x")),
    ]);
}

#[test]
fn keys_are_checked_independently() {
    let r = accepts(&[
        on("x", write(1, 0, 10, "1")),
        on("y", write(1, 0, 10, "1")),
        on("x", read(2, 20, 30, Some("1"))),
        on("y", read(2, 20, 30, Some("1"))),
    ]);
    assert_eq!(r.keys.len(), 2);
    assert_eq!(r.counts(), (2, 0, 0, 0));
}

// ---- known-bad histories ----

#[test]
fn rejects_a_stale_read_after_a_completed_write() {
    let v = rejects(&[write(1, 0, 10, "a"), write(1, 20, 30, "b"), read(2, 40, 50, Some("a"))]);
    // The explanation: both writes placed, the register holds "b", the read saw "a".
    assert_eq!(v.prefix, vec![0, 1]);
    assert_eq!(v.state, self::v("b"));
    assert_eq!(v.blocking.as_ref().map(|b| b.0), Some(2));
    assert_eq!(v.candidates.len(), 1);
    assert_eq!(v.candidates[0].index, 2);
    assert_eq!(v.candidates[0].model, OpResult::Value(self::v("b")));
}

#[test]
fn rejects_a_read_of_a_value_never_written() {
    rejects(&[write(1, 0, 10, "a"), read(2, 5, 50, Some("zzz"))]);
    rejects(&[read(2, 0, 50, Some("zzz"))]);
}

#[test]
fn rejects_a_read_of_nothing_after_a_completed_write() {
    rejects(&[write(1, 0, 10, "a"), read(2, 20, 30, None)]);
}

#[test]
fn rejects_a_lost_acknowledged_write() {
    // "b" was acknowledged before the reads began, but later reads fall back to "a".
    rejects(&[
        write(1, 0, 10, "a"),
        read(2, 20, 30, Some("a")),
        write(1, 40, 50, "b"),
        read(2, 60, 70, Some("b")),
        read(2, 80, 90, Some("a")),
    ]);
    rejects(&[write(1, 0, 10, "a"), write(1, 40, 50, "b"), read(2, 60, 70, Some("a"))]);
}

#[test]
fn rejects_reads_that_see_concurrent_writes_in_contradictory_orders() {
    let v = rejects(&[
        write(1, 0, 100, "a"),
        write(2, 0, 100, "b"),
        read(3, 10, 20, Some("a")),
        read(3, 30, 40, Some("b")),
        read(4, 10, 20, Some("b")),
        read(4, 30, 40, Some("a")),
    ]);
    assert!(!v.candidates.is_empty());
}

#[test]
fn rejects_a_failed_write_whose_value_is_seen() {
    rejects(&[write(1, 0, 10, "a"), failed(2, OpKind::write("b"), 20, 30), read(1, 40, 50, Some("b"))]);
}

#[test]
fn rejects_two_set_nx_both_winning_on_an_absent_key() {
    rejects(&[
        ok(1, OpKind::SetNx(b"a".to_vec()), 0, 100, OpResult::Flag(true)),
        ok(2, OpKind::SetNx(b"b".to_vec()), 0, 100, OpResult::Flag(true)),
    ]);
    // ... even with a delete that might have come between, if the delete certainly didn't.
    rejects(&[
        ok(1, OpKind::SetNx(b"a".to_vec()), 0, 100, OpResult::Flag(true)),
        ok(2, OpKind::SetNx(b"b".to_vec()), 0, 100, OpResult::Flag(true)),
        failed(3, OpKind::delete(), 0, 100),
    ]);
    // An unknown delete between them makes it possible.
    accepts(&[
        ok(1, OpKind::SetNx(b"a".to_vec()), 0, 100, OpResult::Flag(true)),
        ok(2, OpKind::SetNx(b"b".to_vec()), 0, 100, OpResult::Flag(true)),
        unknown(3, OpKind::delete(), 0),
    ]);
}

#[test]
fn rejects_set_nx_that_fails_on_an_absent_key() {
    rejects(&[ok(1, OpKind::SetNx(b"a".to_vec()), 0, 10, OpResult::Flag(false))]);
}

#[test]
fn rejects_two_increments_returning_the_same_value() {
    rejects(&[
        ok(1, OpKind::Incr(1), 0, 100, OpResult::Int(1)),
        ok(2, OpKind::Incr(1), 0, 100, OpResult::Int(1)),
    ]);
}

#[test]
fn rejects_a_delete_that_found_an_absent_key() {
    rejects(&[write(1, 0, 10, "a"), ok(2, OpKind::delete(), 20, 30, OpResult::Int(0))]);
}

#[test]
fn rejects_an_unknown_write_undone_after_it_was_seen() {
    // Once a read saw the unknown write's value, a completed later write can't be undone.
    rejects(&[
        unknown(1, OpKind::write("a"), 0),
        write(2, 20, 30, "b"),
        read(3, 40, 50, Some("a")),
        read(3, 60, 70, Some("b")),
    ]);
}

#[test]
fn rejects_when_any_key_is_bad() {
    let r = check(&[
        on("good", write(1, 0, 10, "a")),
        on("good", read(2, 20, 30, Some("a"))),
        on("bad", write(1, 0, 10, "a")),
        on("bad", read(2, 20, 30, Some("b"))),
    ]);
    assert!(r.has_violation(), "{r}");
    assert_eq!(r.counts(), (1, 1, 0, 0));
    assert!(matches!(r.key(b"good").unwrap().verdict, Verdict::Linearizable));
    assert!(matches!(r.key(b"bad").unwrap().verdict, Verdict::NotLinearizable(_)));
    let text = r.to_string();
    assert!(text.contains("NOT LINEARIZABLE") && text.contains("\"bad\""), "{text}");
}

#[test]
fn malformed_histories_are_not_a_pass() {
    let mut no_ret = write(1, 0, 10, "a");
    no_ret.ret = None;
    let r = check(&[no_ret]);
    assert_eq!(r.overall(), Overall::Malformed, "{r}");
    assert!(!r.is_linearizable());
    // A result of the wrong shape.
    let r = check(&[ok(1, OpKind::Read, 0, 10, OpResult::Flag(true))]);
    assert_eq!(r.overall(), Overall::Malformed, "{r}");
    // A return before the call.
    let r = check(&[write(1, 10, 5, "a")]);
    assert_eq!(r.overall(), Overall::Malformed, "{r}");
}

#[test]
fn an_exhausted_budget_is_unknown_not_a_pass() {
    // Many concurrent increments whose results no one saw, then a read no sum can explain: the
    // search must try subsets of them, which a tiny budget can't.
    let mut h: Vec<Op> = (0..24).map(|c| unknown(c, OpKind::Incr(1 << (c % 12)), 0)).collect();
    h.push(read(99, 10, 20, Some("-1")));
    let opts = CheckOptions { max_states: 1000, ..CheckOptions::default() };
    let r = check_with(&h, &opts);
    assert_eq!(r.overall(), Overall::Unknown, "{r}");
    assert!(!r.is_linearizable() && !r.has_violation());
    assert!(r.to_string().contains("UNKNOWN"));
    assert!(matches!(r.keys[0].verdict, Verdict::Unknown { .. }));
}

#[test]
#[should_panic(expected = "NOT LINEARIZABLE")]
fn assert_linearizable_panics_and_saves_the_history() {
    let h = [write(1, 0, 10, "a"), read(2, 20, 30, Some("b"))];
    let path = history_path("checker-selftest-panics");
    let _ = std::fs::remove_file(&path);
    let result = std::panic::catch_unwind(|| assert_linearizable(&h, "checker-selftest-panics"));
    assert_eq!(load_history(&path).expect("saved"), h.to_vec());
    let _ = std::fs::remove_file(&path);
    std::panic::resume_unwind(result.expect_err("must panic"));
}

// ---- JSON lines ----

#[test]
fn histories_round_trip_through_json_lines() {
    let h = vec![
        write(1, 0, 10, "a"),
        Op::new(2, vec![0xff, 0, 1], OpKind::Write(Some(vec![0xc3, 0x28])), 5, Some(7), Outcome::Failed),
        ok(3, OpKind::delete(), 11, 12, OpResult::Int(1)),
        unknown(4, OpKind::SetNx(b"n".to_vec()), 13),
        ok(5, OpKind::SetXx(b"x".to_vec()), 14, 15, OpResult::Flag(false)),
        ok(6, OpKind::Incr(-3), 16, 17, OpResult::Int(-3)),
        ok(6, OpKind::Incr(1), 16, 17, OpResult::Error),
        ok(7, OpKind::Append(b"tail\n".to_vec()), 18, 19, OpResult::Int(5)),
        read(8, 20, 21, None),
        read(8, 22, 23, Some("\"quoted\"")),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.jsonl");
    save_history(&path, &h).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), h.len());
    assert!(text.lines().next().unwrap().contains("\"write\":\"a\""), "{text}");
    assert_eq!(load_history(&path).unwrap(), h);
    // A saved bad history is still rejected when loaded.
    let bad = [write(1, 0, 10, "a"), read(2, 20, 30, Some("b"))];
    save_history(&path, &bad).unwrap();
    assert!(check(&load_history(&path).unwrap()).has_violation());
    // Garbage is an error with its line number.
    std::fs::write(&path, "{\"client\":1}\n").unwrap();
    let err = load_history(&path).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn the_recorder_records_intervals_in_call_order() {
    let rec = std::sync::Arc::new(Recorder::new());
    let threads: Vec<_> = (0..4u64)
        .map(|c| {
            let rec = rec.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let p = rec.invoke(c, format!("k{}", i % 3), OpKind::write(format!("{c}-{i}")));
                    rec.complete(p, Outcome::Ok(OpResult::Done));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let h = rec.history();
    assert_eq!(h.len(), 200);
    assert!(h.windows(2).all(|w| w[0].call <= w[1].call));
    assert!(h.iter().all(|o| o.ret.unwrap() >= o.call));
    accepts(&h);
}

// ---- the set check ----

#[test]
fn set_check_accepts_a_consistent_set() {
    let mut s = SetCheck::new();
    for i in 0..10 {
        s.acknowledged(i);
    }
    s.failed(10);
    s.unknown(11);
    s.unknown(12);
    s.add(13, &Outcome::Ok(OpResult::Done));
    s.add(14, &Outcome::Unknown);
    s.final_read((0..10).chain([11, 13]));
    let r = s.check();
    assert!(r.is_ok(), "{r}");
    r.assert_ok();
    assert_eq!((r.attempted, r.acknowledged, r.failed, r.unknown), (15, 11, 1, 3));
    assert_eq!((r.unknown_present, r.unknown_absent, r.read), (1, 2, 12));
}

#[test]
fn set_check_rejects_lost_acknowledged_elements() {
    let mut s = SetCheck::new();
    s.acknowledged("a");
    s.acknowledged("b");
    s.final_read(["a"]);
    let r = s.check();
    assert!(!r.is_ok());
    assert_eq!(r.lost, vec!["b"]);
    assert!(r.to_string().contains("lost"), "{r}");
}

#[test]
fn set_check_rejects_failed_elements_that_appear() {
    let mut s = SetCheck::new();
    s.failed("a");
    s.final_read(["a"]);
    let r = s.check();
    assert!(!r.is_ok());
    assert_eq!(r.failed_present, vec!["a"]);
    // An element retried after a failure and then acknowledged is acknowledged.
    s.acknowledged("a");
    assert!(s.check().is_ok());
}

#[test]
fn set_check_rejects_unexpected_and_duplicated_elements_and_a_missing_read() {
    let mut s = SetCheck::new();
    s.acknowledged(1);
    assert!(!s.check().is_ok(), "no final read");
    s.final_read([1, 2]);
    assert_eq!(s.check().unexpected, vec![2]);
    s.final_read([1, 1]);
    assert_eq!(s.check().duplicated, vec![1]);
    s.final_read([1]);
    assert!(s.check().is_ok());
}

#[test]
#[should_panic(expected = "NOT OK")]
fn set_check_assert_ok_panics() {
    let mut s = SetCheck::new();
    s.acknowledged(1);
    s.final_read(Vec::<i32>::new());
    s.check().assert_ok();
}

// ---- randomized histories of a simulated register ----

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy)]
struct Workload {
    clients: u64,
    keys: u64,
    ops: usize,
    /// Op durations and gaps between a client's ops, ns.
    max_duration: u64,
    max_gap: u64,
    failed_percent: u64,
    unknown_percent: u64,
    /// Only reads and writes (and deletes).
    registers_only: bool,
    /// No write or delete result recorded (`Done`): a key of reads and unchecked writes.
    unchecked_writes: bool,
}

/// A history of a real (atomic) register per key: each op takes effect at a random instant
/// inside its interval (unknown ops: at a random instant after their call, or never; failed
/// ops: never), and results are what the register gave at that instant. Written values are
/// unique multiples of 1e6, so increments never make one again.
fn simulate(seed: u64, w: Workload) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut clock: Vec<u64> = (0..w.clients).map(|_| rng.below(w.max_gap + 1)).collect();
    let mut next_value = 1u64;
    // (instant of effect or None, op)
    let mut planned: Vec<(Option<u64>, Op)> = Vec::with_capacity(w.ops);
    for i in 0..w.ops {
        let client = i as u64 % w.clients;
        let call = clock[client as usize];
        let ret = call + 1 + rng.below(w.max_duration);
        clock[client as usize] = ret + rng.below(w.max_gap + 1);
        let key = format!("key{}", rng.below(w.keys));
        let mut value = || {
            next_value += 1;
            (next_value * 1_000_000).to_string().into_bytes()
        };
        let kind = match (w.registers_only, rng.below(100)) {
            (_, 0..=44) => OpKind::Read,
            (_, 45..=79) => OpKind::Write(Some(value())),
            (true, _) | (false, 80..=84) => OpKind::Write(None),
            (false, 85..=89) => OpKind::SetNx(value()),
            (false, 90..=92) => OpKind::SetXx(value()),
            (false, 93..=97) => OpKind::Incr(rng.below(5) as i64 - 1),
            (false, _) => OpKind::Append(b"x".to_vec()),
        };
        let (outcome, at) = if rng.percent(w.failed_percent) {
            (Outcome::Failed, None)
        } else if rng.percent(w.unknown_percent) {
            let at = rng.percent(50).then(|| call + rng.below(4 * w.max_duration + 1));
            (Outcome::Unknown, at)
        } else {
            (Outcome::Ok(OpResult::Done), Some(call + rng.below(ret - call + 1)))
        };
        planned.push((at, Op::new(client, key, kind, call, Some(ret), outcome)));
    }
    // Apply in order of effect.
    let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].0.is_some()).collect();
    order.sort_by_key(|&i| (planned[i].0, i));
    let mut registers: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for i in order {
        let op = &mut planned[i].1;
        let current = registers.get(&op.key).cloned();
        let (next, result) = match &op.kind {
            OpKind::Read => (current.clone(), OpResult::Value(current)),
            OpKind::Write(Some(x)) => (Some(x.clone()), OpResult::Done),
            OpKind::Write(None) => (None, OpResult::Int(current.is_some() as i64)),
            OpKind::SetNx(x) if current.is_none() => (Some(x.clone()), OpResult::Flag(true)),
            OpKind::SetXx(x) if current.is_some() => (Some(x.clone()), OpResult::Flag(true)),
            OpKind::SetNx(_) | OpKind::SetXx(_) => (current, OpResult::Flag(false)),
            OpKind::Incr(by) => {
                let n = match &current {
                    None => Some(0),
                    Some(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()),
                };
                match n {
                    Some(n) => (Some((n + by).to_string().into_bytes()), OpResult::Int(n + by)),
                    None => (current, OpResult::Error),
                }
            }
            OpKind::Append(x) => {
                let mut s = current.unwrap_or_default();
                s.extend_from_slice(x);
                let len = s.len() as i64;
                (Some(s), OpResult::Int(len))
            }
        };
        match next {
            Some(x) => registers.insert(op.key.clone(), x),
            None => registers.remove(&op.key),
        };
        if let Outcome::Ok(r) = &mut op.outcome {
            // Keep some results unchecked, as a workload that ignores SET's reply would.
            *r = if matches!(op.kind, OpKind::Write(_)) && (i % 3 == 0 || w.unchecked_writes) {
                OpResult::Done
            } else {
                result
            };
        }
    }
    let mut h: Vec<Op> = planned.into_iter().map(|(_, op)| op).collect();
    h.sort_by_key(|o| o.call);
    h
}

const SMALL: Workload = Workload {
    clients: 5,
    keys: 2,
    ops: 60,
    max_duration: 100,
    max_gap: 30,
    failed_percent: 5,
    unknown_percent: 8,
    registers_only: false,
    unchecked_writes: false,
};

/// Makes an ok read somewhere in `h` see a value no op ever wrote.
fn mutate_to_unwritten_value(h: &mut [Op], rng: &mut Rng) -> bool {
    let reads: Vec<usize> = (0..h.len())
        .filter(|&i| h[i].kind == OpKind::Read && matches!(h[i].outcome, Outcome::Ok(_)))
        .collect();
    if reads.is_empty() {
        return false;
    }
    let i = reads[rng.below(reads.len() as u64) as usize];
    h[i].outcome = Outcome::Ok(OpResult::Value(v("never-written")));
    true
}

/// Makes an ok read see the value of an ok write that was certainly overwritten before the
/// read was called (a write of another value, or a delete, called after the first write
/// returned and returning before the read's call).
fn mutate_to_stale_value(h: &mut [Op], rng: &mut Rng) -> bool {
    let ok = |o: &Op| matches!(o.outcome, Outcome::Ok(_));
    let mut choices = Vec::new();
    for (r, read) in h.iter().enumerate().filter(|(_, o)| o.kind == OpKind::Read && ok(o)) {
        for w2 in h.iter().filter(|o| o.key == read.key && ok(o) && o.ret < Some(read.call)) {
            if !matches!(w2.kind, OpKind::Write(_)) {
                continue;
            }
            for w in h.iter().filter(|o| o.key == read.key && ok(o) && o.ret < Some(w2.call)) {
                if let OpKind::Write(Some(x)) = &w.kind {
                    if OpResult::Value(Some(x.clone())) != read.outcome_result() {
                        choices.push((r, x.clone()));
                    }
                }
            }
        }
        if choices.len() > 50 {
            break;
        }
    }
    if choices.is_empty() {
        return false;
    }
    let (r, x) = choices.swap_remove(rng.below(choices.len() as u64) as usize);
    h[r].outcome = Outcome::Ok(OpResult::Value(Some(x)));
    true
}

trait ResultOf {
    fn outcome_result(&self) -> OpResult;
}

impl ResultOf for Op {
    fn outcome_result(&self) -> OpResult {
        match &self.outcome {
            Outcome::Ok(r) => r.clone(),
            _ => OpResult::Done,
        }
    }
}

#[test]
fn random_histories_of_a_real_register_are_linearizable() {
    let mut kinds = [0usize; 3];
    for seed in 0..300 {
        let w = Workload { registers_only: seed % 3 != 1, unchecked_writes: seed % 3 == 2, ..SMALL };
        let h = simulate(seed, w);
        let r = check(&h);
        assert!(r.is_linearizable(), "seed {seed}:\n{r}");
        kinds[0] += r.ok;
        kinds[1] += r.failed;
        kinds[2] += r.unknown;
    }
    // The generator made every kind of outcome.
    assert!(kinds.iter().all(|&k| k > 100), "{kinds:?}");
}

#[test]
fn random_histories_with_heavy_concurrency_are_linearizable() {
    for seed in 0..60 {
        let w = Workload {
            clients: 12,
            keys: 1,
            ops: 150,
            max_duration: 400,
            max_gap: 10,
            registers_only: seed % 3 != 1,
            unchecked_writes: seed % 3 == 2,
            ..SMALL
        };
        let r = check(&simulate(1000 + seed, w));
        assert!(r.is_linearizable(), "seed {seed}:\n{r}");
    }
}

#[test]
fn random_histories_with_an_unwritten_value_read_are_rejected() {
    let mut rng = Rng(7);
    let mut mutated = 0;
    for seed in 0..300 {
        let mut h = simulate(seed, SMALL);
        if !mutate_to_unwritten_value(&mut h, &mut rng) {
            continue;
        }
        mutated += 1;
        let r = check(&h);
        assert!(r.has_violation(), "seed {seed}:\n{r}");
    }
    assert!(mutated > 250, "{mutated}");
}

#[test]
fn random_histories_with_a_stale_read_are_rejected() {
    let mut rng = Rng(11);
    let mut mutated = 0;
    for seed in 0..300 {
        let w = Workload { registers_only: seed % 3 != 1, unchecked_writes: seed % 3 == 2, ..SMALL };
        let mut h = simulate(seed, w);
        if !mutate_to_stale_value(&mut h, &mut rng) {
            continue;
        }
        mutated += 1;
        let r = check(&h);
        assert!(r.has_violation(), "seed {seed}:\n{r}");
    }
    assert!(mutated > 150, "{mutated}");
}

// ---- size: ~10k ops, 32 clients ----

const BIG: Workload = Workload {
    clients: 32,
    keys: 10,
    ops: 10_000,
    max_duration: 2_000_000,
    max_gap: 500_000,
    failed_percent: 2,
    unknown_percent: 3,
    registers_only: false,
    unchecked_writes: false,
};

fn timed(name: &str, h: &[Op]) -> Report {
    let t = Instant::now();
    let r = check(h);
    println!(
        "{name}: {} ops, {} keys -> {:?}: {} states (max {} on one key), {} ms",
        h.len(),
        r.keys.len(),
        r.overall(),
        r.states(),
        r.max_key_states(),
        t.elapsed().as_millis()
    );
    r
}

#[test]
fn ten_thousand_ops_check_with_a_bounded_search() {
    for (keys, registers_only, unchecked_writes) in [(10, false, false), (10, true, true), (50, false, false)]
    {
        let h = simulate(42 + keys, Workload { keys, registers_only, unchecked_writes, ..BIG });
        let r = timed(&format!("{keys} keys, registers only {registers_only}"), &h);
        assert!(r.is_linearizable(), "{r}");
        // Nothing like an exhaustive search: a few configurations per op.
        assert!(r.states() <= 3 * h.len() as u64, "{} states for {} ops", r.states(), h.len());
    }
}

#[test]
fn a_hot_key_checks_with_a_bounded_search() {
    for registers_only in [true, false] {
        let h = simulate(5, Workload { keys: 1, clients: 4, ops: 3000, registers_only, ..BIG });
        let r = timed(&format!("1 key, 4 clients, registers only {registers_only}"), &h);
        assert!(r.is_linearizable(), "{r}");
        assert!(r.states() <= 10 * h.len() as u64, "{} states for {} ops", r.states(), h.len());
    }
}

#[test]
fn ten_thousand_ops_with_one_stale_read_are_rejected() {
    let mut rng = Rng(3);
    for (keys, registers_only) in [(10, false), (10, true), (50, true)] {
        let mut h = simulate(99 + keys, Workload { keys, registers_only, ..BIG });
        assert!(mutate_to_stale_value(&mut h, &mut rng));
        let r = timed(&format!("stale read, {keys} keys, registers only {registers_only}"), &h);
        assert!(r.has_violation(), "{r}");
        assert_eq!(r.counts(), (keys as usize - 1, 1, 0, 0), "{r}");
        assert!(r.states() <= 3 * h.len() as u64, "{} states for {} ops", r.states(), h.len());
    }
}
