//! `flotilla kv` against real `flotilla start` processes on 127.0.0.1-3, through the native
//! client; and a node refuses to start on a malformed `FLOTILLA_TEST_CHAOS`.

mod harness;

use std::process::Command;

use harness::Cluster;

fn kv(args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_flotilla")).arg("kv").args(args).output().expect("run flotilla kv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kv_commands_reach_the_cluster_through_any_node() {
    let cluster = Cluster::start("cli-kv", 3, 4);
    let host1 = cluster.nodes[0].listen.to_string();
    let host3 = cluster.nodes[2].listen.to_string();
    let with = |host: &str, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--host", host, "--insecure"]);
        kv(&all)
    };
    for (k, v) in [("apple", "red"), ("kiwi", "green"), ("Zebra", "striped")] {
        let (ok, out, err) = with(&host1, &["put", k, v]);
        assert!(ok, "put {k}: {err}");
        assert_eq!(out, "OK\n");
    }
    assert_eq!(with(&host3, &["get", "kiwi"]).1, "green\n");
    assert_eq!(with(&host3, &["get", "nothing"]).1, "(nil)\n");
    let (ok, out, err) = with(&host3, &["scan", "A", "z"]);
    assert!(ok, "{err}");
    assert_eq!(out, "Zebra\tstriped\napple\tred\nkiwi\tgreen\n");
    assert_eq!(with(&host3, &["scan", "", "", "--limit", "1"]).1, "Zebra\tstriped\n");
    assert_eq!(with(&host1, &["del", "apple"]).1, "1\n");
    assert_eq!(with(&host1, &["del", "apple"]).1, "0\n");

    // A wrong cluster id and a missing TLS choice are clear errors.
    let (ok, _, err) = kv(&["get", "k", "--host", &host1, "--insecure", "--cluster-id", "other"]);
    assert!(!ok && err.contains("cluster id mismatch"), "{err}");
    let (ok, _, err) = kv(&["get", "k", "--host", &host1]);
    assert!(!ok && err.contains("--insecure"), "{err}");
}

#[test]
fn a_malformed_chaos_spec_stops_the_node_from_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["start", "--id", "1", "--listen", "127.0.0.1:17411", "--resp", "127.0.0.1:17412"])
        .args(["--http", "127.0.0.1:17413", "--join", "127.0.0.1:17411", "--insecure"])
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .env("FLOTILLA_TEST_CHAOS", "delay_ms=20,drop=2")
        .output()
        .expect("run flotilla start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("FLOTILLA_TEST_CHAOS") && err.contains("drop"), "{err}");
}
