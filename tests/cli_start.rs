//! `flotilla start` refuses bad settings with a message that names the setting, and never
//! starts a half-configured node.

use std::process::Command;

fn start(args: &[&str]) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_flotilla")).arg("start").args(args).output().expect("run flotilla");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const BASE: [&str; 10] = [
    "--id",
    "1",
    "--listen",
    "127.0.0.1:17401",
    "--resp",
    "127.0.0.1:17402",
    "--http",
    "127.0.0.1:17403",
    "--join",
    "127.0.0.1:17401",
];

#[test]
fn start_requires_a_tls_choice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut args = BASE.to_vec();
    args.extend(["--data-dir", data.to_str().unwrap()]);
    let (ok, err) = start(&args);
    assert!(!ok);
    assert!(err.contains("--insecure") && err.contains("--certs-dir"), "{err}");
}

#[test]
fn start_rejects_bad_values_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cases: [(&[&str], &str); 6] = [
        (&["--id", "0"], "--id must be a positive integer"),
        (&["--listen", "nonsense"], "--listen"),
        (&["--join", "127.0.0.1:17401,127.0.0.1:17401"], "--join: an address appears twice"),
        (&["--initial-ranges", "0"], "--initial-ranges"),
        (&["--io-threads", "65"], "--io-threads"),
        (&["--labels", "zone"], "--labels"),
    ];
    for (change, expected) in cases {
        let mut args: Vec<&str> = BASE.to_vec();
        for pair in change.chunks(2) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(i) => args[i + 1] = pair[1],
                None => args.extend_from_slice(pair),
            }
        }
        args.extend(["--data-dir", data.to_str().unwrap(), "--insecure"]);
        let (ok, err) = start(&args);
        assert!(!ok, "accepted {change:?}");
        assert!(err.contains(expected), "{change:?}: expected {expected:?} in {err}");
    }
}

#[test]
fn config_file_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "id = 1\ndata_dir = \"/tmp/x\"\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let (ok, err) = start(&["--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("listen_addr") && err.contains("node.toml"), "{err}");
}

#[test]
fn node_not_in_the_initial_cluster_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut args = BASE.to_vec();
    args[9] = "127.0.0.1:17501,127.0.0.1:17502";
    args.extend(["--data-dir", data.to_str().unwrap(), "--insecure"]);
    let (ok, err) = start(&args);
    assert!(!ok);
    assert!(err.contains("not in the initial cluster"), "{err}");
}

#[test]
fn bench_subcommand_is_the_harness() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, help, _) = run(&["--help"]);
    assert!(ok && help.contains("--workload") && help.contains("flotilla bench"), "{help}");
    let (ok, _, err) = run(&["-t", "bogus://x", "-d", "1s"]);
    assert!(!ok && err.contains("unknown scheme"), "{err}");
}
