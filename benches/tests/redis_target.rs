//! The harness end to end against a real redis-server on a free port: runs YCSB-B for about two
//! seconds and checks the table, the JSON figures and the SVG. Skipped (with the reason printed)
//! when `redis-server` is not installed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &std::path::Path) -> Option<(Redis, u16)> {
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((redis, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn ycsb_b_against_redis_reports_figures() {
    if Command::new("redis-server").arg("--version").output().is_err() {
        println!("skipped: redis-server is not on PATH (apt-get install -y redis-server)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = start_redis(dir.path()).expect("redis-server started and listening");
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-bench"))
        .args(["--target", &format!("redis=resp://127.0.0.1:{port}")])
        .args([
            "--workload",
            "b",
            "--clients",
            "4",
            "--keys",
            "500",
            "--duration",
            "1500ms",
            "--warmup",
            "500ms",
        ])
        .arg("--no-progress")
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("ops/s") && stdout.contains("p99 ms") && stdout.contains("ycsb-b"), "{stdout}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["label"], "redis");
    assert_eq!(run["loaded_keys"], 500);
    assert_eq!(run["errors"], 0, "{run}");
    let ops = run["ops"].as_u64().unwrap();
    assert!(ops > 100, "only {ops} ops in 1.5 s");
    assert!((run["ops_per_second"].as_f64().unwrap() - ops as f64 / 1.5).abs() < 1.0);
    let latency = &run["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() > 0);
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert!(
        run["latency_us_by_kind"]["read"]["count"].as_u64().unwrap()
            > run["latency_us_by_kind"]["write"]["count"].as_u64().unwrap()
    );
    let timeline: u64 = run["timeline_ops"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(timeline, ops);

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
}

#[test]
fn unsupported_targets_fail_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-bench"))
        .args(["--target", "resp://127.0.0.1:1", "--workload", "e", "--duration", "1s", "--no-progress"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not support Scan"), "{stderr}");
}
