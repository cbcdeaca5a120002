//! Network faults without touching the host's network: a test re-runs itself inside a network
//! namespace it creates (`ip netns add`, loopback up), where every node, client and nftables
//! rule lives. Partitions are nftables input-hook drops of UDP (QUIC, node to node) between
//! 127.0.0.A and 127.0.0.B; the tests' own RESP and HTTP connections are TCP and never cut.

use std::process::Command;

/// Set in the re-run child: the name of the namespace it runs in.
const INSIDE: &str = "FLOTILLA_NETNS_INSIDE";
const TABLE: &str = "flotilla_nemesis";

/// Runs the calling test inside a fresh network namespace. Returns `true` in the child (go on
/// with the test there); in the parent, runs the child, removes the namespace, fails if the
/// child failed, and returns `false`. Without root, `ip` or `nft`, prints why and returns
/// `false`: the test is skipped, not passed.
pub fn run_isolated(test_name: &str) -> bool {
    if std::env::var(INSIDE).is_ok() {
        setup_table();
        return true;
    }
    if let Some(reason) = unavailable() {
        eprintln!("SKIPPED {test_name}: {reason}");
        return false;
    }
    let ns = format!("flt{}-{}", std::process::id(), short_hash(test_name));
    let _ = run("ip", &["netns", "del", &ns]);
    run("ip", &["netns", "add", &ns]).unwrap_or_else(|e| panic!("ip netns add {ns}: {e}"));
    let guard = NamespaceGuard(ns.clone());
    run("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]).expect("loopback up");
    let exe = std::env::current_exe().expect("current test binary");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, &ns)
        .status()
        .expect("run the test inside the namespace");
    drop(guard);
    assert!(status.success(), "{test_name} failed inside network namespace {ns} ({status})");
    false
}

/// Why namespaced tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("network namespaces and nftables need root".into());
    }
    if run("nft", &["--version"]).is_err() {
        return Some("nft not found (apt-get install -y nftables)".into());
    }
    if run("ip", &["netns", "list"]).is_err() {
        return Some("`ip netns` does not work here".into());
    }
    None
}

fn short_hash(text: &str) -> u32 {
    text.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 1_000_000
}

struct NamespaceGuard(String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn nft(rule: &str) {
    let args: Vec<&str> = rule.split_whitespace().collect();
    run("nft", &args).unwrap_or_else(|e| panic!("{e}"));
}

fn setup_table() {
    let _ = run("nft", &["delete", "table", "inet", TABLE]);
    nft(&format!("add table inet {TABLE}"));
    run(
        "nft",
        &["add", "chain", "inet", TABLE, "input", "{ type filter hook input priority 0 ; policy accept ; }"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn ip(node: usize) -> String {
    format!("127.0.0.{node}")
}

/// Drops node-to-node packets from `from` to `to` (one way).
pub fn cut_one_way(from: usize, to: usize) {
    nft(&format!(
        "add rule inet {TABLE} input meta l4proto udp ip saddr {} ip daddr {} drop",
        ip(from),
        ip(to)
    ));
}

/// Cuts both directions between `a` and `b`.
pub fn cut(a: usize, b: usize) {
    cut_one_way(a, b);
    cut_one_way(b, a);
}

/// Cuts every link between the two sides.
pub fn split(side_a: &[usize], side_b: &[usize]) {
    for &a in side_a {
        for &b in side_b {
            cut(a, b);
        }
    }
}

/// Drops `percent`% of all node-to-node packets, at random.
pub fn lose(percent: u32) {
    nft(&format!("add rule inet {TABLE} input meta l4proto udp numgen random mod 100 < {percent} drop"));
}

/// Removes every fault rule.
pub fn heal() {
    nft(&format!("flush chain inet {TABLE} input"));
}
