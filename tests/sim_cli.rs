//! `flotilla sim` as a user runs it: real process, real output.
//!
//! - a clean run reports zero violations and exercises every fault kind;
//! - one seed replays byte-identically;
//! - every planted bug is caught (non-zero exit, a VIOLATION line with a replay command).

use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla")).args(args).output().expect("run flotilla")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads `name N` from the totals line.
fn total(text: &str, name: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with("totals:")).expect("totals line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == name).unwrap_or_else(|| panic!("no {name} in {line}"));
    words[at + 1].parse().expect("number")
}

#[test]
fn sim_clean_run_has_no_violations_and_exercises_every_fault() {
    let out = flotilla(&["sim", "--seeds", "40", "--nodes", "5", "--groups", "2"]);
    let text = stdout(&out);
    assert!(out.status.success(), "sim failed:\n{text}");
    assert_eq!(total(&text, "violations"), 0, "{text}");
    assert_eq!(total(&text, "seeds"), 40);
    for counter in
        ["elections", "commits", "crashes", "partitions", "membership", "transfers", "snapshots", "reads"]
    {
        assert!(total(&text, counter) > 0, "{counter} is zero:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.starts_with("seed ")).count(), 40);
}

#[test]
fn sim_same_seed_replays_byte_identically() {
    let a = flotilla(&["sim", "--seed", "1234", "--seeds", "3", "--threads", "2"]);
    let b = flotilla(&["sim", "--seed", "1234", "--seeds", "3", "--threads", "1"]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout, "output differs between runs of the same seeds");
    assert!(!a.stdout.is_empty());
}

#[test]
fn sim_catches_every_planted_bug() {
    for bug in [
        "vote-twice",
        "commit-old-term",
        "skip-log-check",
        "forget-hardstate",
        "lease-no-drift",
        "joint-single-quorum",
    ] {
        let out = flotilla(&["sim", "--inject-bug", bug, "--seeds", "2000", "--quiet"]);
        let text = stdout(&out);
        assert!(!out.status.success(), "{bug}: sim exited 0:\n{text}");
        let violation = text
            .lines()
            .find(|l| l.starts_with("VIOLATION seed"))
            .unwrap_or_else(|| panic!("{bug}: no violation:\n{text}"));
        assert!(
            !violation.contains("assertion"),
            "{bug}: caught only by a panic, not by a checker: {violation}"
        );
        let replay = text.lines().find(|l| l.starts_with("replay: ")).expect("replay line");
        assert!(replay.contains(&format!("--inject-bug {bug}")), "{replay}");
    }
}

#[test]
fn sim_rejects_bad_arguments_clearly() {
    let out = flotilla(&["sim", "--nodes", "4"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes must be 3 or 5"));
    let out = flotilla(&["sim", "--inject-bug", "no-such-bug"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: vote-twice"));
}

#[test]
fn sim_whole_nodes_run_clean_and_replay_identically() {
    let args = ["sim", "--level", "node", "--seeds", "6", "--groups", "3", "--steps", "8000"];
    let a = flotilla(&args);
    let text = stdout(&a);
    assert!(a.status.success(), "node-level sim failed:\n{text}");
    assert_eq!(total(&text, "violations"), 0, "{text}");
    for counter in ["elections", "commits", "crashes", "partitions"] {
        assert!(total(&text, counter) > 0, "{counter} is zero:\n{text}");
    }
    let b = flotilla(&args);
    assert_eq!(a.stdout, b.stdout, "whole-node simulation is not deterministic");
}
